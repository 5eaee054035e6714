# <nb2prod/runtime/__main__.py, verbatim: compared separately by test_golden.py>
