# <nb2prod/runtime/files.py, verbatim: compared separately by test_golden.py>
