"""The inline gateway: mitmproxy addons loaded by ``inline/gateway.py`` (see its docstring for the order)."""
