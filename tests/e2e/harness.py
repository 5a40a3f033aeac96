"""Compatibility: the e2e helpers under their old single name.

The harness is split into modules with one concern each (tests/e2e/README.md):
client.py (HTTP), deploy.py (deployments and signetd), verify.py
(independent verifiers), tamper.py (tampering). Test files import from those;
`import harness as H` still finds every name for a test written against the
old single module."""

from client import *  # noqa: F401,F403
from client import make_response as _make_response  # noqa: F401
from deploy import *  # noqa: F401,F403
from tamper import *  # noqa: F401,F403
from verify import *  # noqa: F401,F403
