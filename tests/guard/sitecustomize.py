# Put on PYTHONPATH by tests/conftest.py so that subprocesses run under the socket guard too.
import os

if os.environ.get("MODELDEPOT_SOCKET_GUARD"):
    from registry.netguard import install

    install()
