# <nb2prod/runtime/metrics.py, verbatim: compared separately by test_golden.py>
