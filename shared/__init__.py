"""Contracts shared by producers, the command worker and the query service.

Nothing here opens a connection or imports worker or HTTP code.
"""
