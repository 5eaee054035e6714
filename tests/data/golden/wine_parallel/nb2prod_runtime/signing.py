# <nb2prod/runtime/signing.py, verbatim: compared separately by test_golden.py>
