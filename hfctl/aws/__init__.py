"""The AWS EC2 provider (``hfctl provider aws``); needs the ``aws`` extra (boto3)."""
