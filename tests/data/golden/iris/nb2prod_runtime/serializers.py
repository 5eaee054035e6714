# <nb2prod/runtime/serializers.py, verbatim: compared separately by test_golden.py>
