# <nb2prod/runtime/__init__.py, verbatim: compared separately by test_golden.py>
