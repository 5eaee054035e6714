# <nb2prod/runtime/param_values.py, verbatim: compared separately by test_golden.py>
