# <nb2prod/runtime/stores.py, verbatim: compared separately by test_golden.py>
