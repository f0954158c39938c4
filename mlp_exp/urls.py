"""Store URLs as the product shows them and as the drivers need them: passwords hidden, psycopg2 named.

Both stores take URLs that may carry a credential: an Optuna storage
(postgresql://user:password@host/db) and an MLflow tracking URI (the same, or
http(s)://user:password@host). `safe_url` is the one way either is shown: in
messages, logs, the parent run's params and the UI's banner. Uses no framework.
"""
from __future__ import annotations

import importlib.util
import re

# scheme://user:password@ : the password runs to the last @ before the host (it may hold an @ itself)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:@/\s]*):(?P<password>[^\s/]*)@")
_QUERY_SECRET = re.compile(r"(?P<key>[?&](?:password|passwd|pwd|token|secret|api_key|access_token)=)[^&\s]*",
                           re.IGNORECASE)


def safe_url(text) -> str:
    """`text` (a URL, or a message that may hold URLs) with every password shown as ***:
    scheme://user:***@host, ?password=***."""
    text = _USERINFO.sub(r"\g<head>:***@", str(text))
    return _QUERY_SECRET.sub(r"\g<key>***", text)


def postgresql_driver(url: str) -> str:
    """postgresql://... names no driver and SQLAlchemy 2.1 then wants psycopg 3: name psycopg2
    (what the project installs) unless psycopg 3 is there. Other URLs are returned as they are."""
    if not url.startswith("postgresql://"):
        return url
    if importlib.util.find_spec("psycopg") is not None:
        return url
    return "postgresql+psycopg2://" + url[len("postgresql://"):]
