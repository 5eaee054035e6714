# <nb2prod/runtime/stage_env.py, verbatim: compared separately by test_golden.py>
