"""MkDocs hook: render the reST roles used in provhub's docstrings as code.

provhub's docstrings are read in editors and ``help()`` as much as on this site, and
write cross references the Sphinx way (``:class:`ProviderError```). Markdown leaves
the role name in front of the code span; this hook drops it, keeping the name as
code (and dropping a leading ``~`` and module path the way Sphinx shows it).
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|attr|exc|data|mod|obj):<code>(~?)([^<]+)</code>")


def _replace(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    """Rewrite ``:role:<code>x</code>`` into ``<code>x</code>``."""
    return _ROLE.sub(_replace, html)
