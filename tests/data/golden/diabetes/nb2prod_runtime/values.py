# <nb2prod/runtime/values.py, verbatim: compared separately by test_golden.py>
