"""A handler's exception as the message's error reply: the server records it per client (clients.csv) and prints
each distinct error once, instead of a traceback per client and round."""

from __future__ import annotations

import functools
from collections.abc import Callable

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

from fedsim.system.errors import error_line


def replies_errors(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """`handler`, its exception becoming an error reply with the exception's last line."""

    @functools.wraps(handler)
    def guarded(message: Message, context: Context) -> Message:
        try:
            return handler(message, context)
        except Exception as exc:
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=error_line(exc)), reply_to=message)

    return guarded
