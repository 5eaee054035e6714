# nb2prod stage runtime <nb2prod-version>: artifact store, save/load, metrics.
# Copied from nb2prod/artifacts.py so this stage runs without nb2prod installed.
# <nb2prod/artifacts.py, verbatim: compared separately by test_golden.py>
