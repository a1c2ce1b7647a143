"""ASGI entry point for daphne: HTTP through Django, websockets through Channels with auth."""

import os
import sys
from pathlib import Path

_platform_dir = str(Path(__file__).resolve().parents[1])
if _platform_dir not in sys.path:
    sys.path.insert(0, _platform_dir)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hub.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from live.routing import websocket_urlpatterns  # noqa: E402
from nodes.relay import NodeRelay  # noqa: E402

browsers = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
node_relay = NodeRelay.as_asgi()  # peers: a bearer token, no cookie, no Origin (not a browser)


async def websockets(scope, receive, send):
    """/ws/node/ is the peers' relay (nodes.relay); every other websocket is a browser's."""
    app = node_relay if scope["path"] == "/ws/node/" else browsers
    return await app(scope, receive, send)


application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": websockets})
