# <nb2prod/runtime/contents.py, verbatim: compared separately by test_golden.py>
