"""The network layer: the only code that opens sockets (curl_transport.py, urllib3_transport.py),
with pure policy beside it.

proxies (config parsing) -> failover (plan + shared route state) -> failure (classify) ->
transport (libcurl, or urllib3) -> sink (verify while streaming) -> download (the loop).
geo orders hosts.
"""
