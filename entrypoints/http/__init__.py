"""``chatledger serve``: the HTTP/JSON service (``pip install 'chatledger[server]'``)."""
