"""The web console of ``chatledger serve`` (issue 15): analytics, sessions with replay, audit.

Mounted under ``/console`` by :func:`chatledger.entrypoints.http.app.create_app`. Charts are drawn
by Chart.js 4.6.1 (MIT, ``static/chart.js-LICENSE.md``), served from the package: no CDN.
"""

from .router import console_router

__all__ = ["console_router"]
