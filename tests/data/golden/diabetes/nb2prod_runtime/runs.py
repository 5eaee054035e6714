# <nb2prod/runtime/runs.py, verbatim: compared separately by test_golden.py>
