# <nb2prod/runtime/errors.py, verbatim: compared separately by test_golden.py>
