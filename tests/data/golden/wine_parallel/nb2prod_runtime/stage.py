# <nb2prod/runtime/stage.py, verbatim: compared separately by test_golden.py>
