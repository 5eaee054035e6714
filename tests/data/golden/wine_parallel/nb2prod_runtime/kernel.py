# <nb2prod/runtime/kernel.py, verbatim: compared separately by test_golden.py>
