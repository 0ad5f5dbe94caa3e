"""Python SDK for Simple Router's REST and WebSocket API (``docs/client.md``)."""

from client.models import (
    ApiKey,
    Balance,
    BestTouch,
    Book,
    BookLevel,
    Ewma,
    Fill,
    Info,
    Kline,
    Message,
    Order,
    OrderEvent,
    Page,
    Resync,
    SymbolInfo,
    Trade,
    User,
)
from client.sdk import ApiError, SimpleRouterClient, Stream, StreamClosed, Subscription
from client.sync import SyncClient

__all__ = [
    "ApiError", "ApiKey", "Balance", "BestTouch", "Book", "BookLevel", "Ewma", "Fill", "Info", "Kline", "Message", "Order", "OrderEvent", "Page", "Resync",
    "SimpleRouterClient", "Stream", "StreamClosed", "Subscription", "SymbolInfo", "SyncClient", "Trade", "User",
]
