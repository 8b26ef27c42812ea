"""The query service: answers status polls over HTTP from the Redis read cache only."""
