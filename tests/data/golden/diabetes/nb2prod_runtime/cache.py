# <nb2prod/runtime/cache.py, verbatim: compared separately by test_golden.py>
