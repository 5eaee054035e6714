# <nb2prod/runtime/web.py, verbatim: compared separately by test_golden.py>
