# <nb2prod/runtime/serving.py, verbatim: compared separately by test_golden.py>
