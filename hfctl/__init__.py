"""hfctl: the operator's tools. Clients of the pair: they send commands by the public wire
contract, read over the query service's HTTP API, and reach the store only through the
command worker's operator entry point (``commands_worker.entrypoints.admin``)."""
