"""The network layer: the only code that opens sockets (transport.py), with pure policy beside it.

proxies (config parsing) -> failover (plan + shared route state) -> failure (classify) ->
transport (urllib3) -> sink (verify while streaming) -> download (the loop). geo orders hosts.
"""
