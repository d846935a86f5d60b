"""One message carrying a node's share of a round's cohort, and one reply carrying every client's answer.

Flower's message path costs a Ray round trip, a serialized model out and a model back per client: a
pooled simulation node that serves 25 clients a round paid it 25 times. A carried message holds the
strategy's content once (the global model, its config) and a `cohort` record listing the partitions
the node serves this round; the node answers each as if it had been sent alone (`carried_cohort`) and
replies once, every client's records under its position in the cohort (`arrays@3`, `metrics@3`, or
`error@3` for a client whose handler failed). The server splits that reply back into per-client
replies (`answers`), so the strategy, the outputs and every failure count see exactly what one message per
client would have given them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from fedsim.messages.addressed import PARTITION, addressed
from fedsim.messages.error_replies import replies_errors

COHORT = "cohort"  # a carried message's record: the partitions it is for, in order
ERROR = "error"


def same_content(messages: Sequence[Message]) -> RecordDict | None:
    """The content every message shares (Flower's strategies send one RecordDict to all), or None when two
    differ: those go one per client."""
    first = messages[0].content
    for message in messages[1:]:
        content = message.content
        if content is first:
            continue
        if list(content.keys()) != list(first.keys()) or not all(
            _same(content[key], first[key]) for key in first.keys()
        ):
            return None
    return first


def _same(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, ArrayRecord) and isinstance(b, ArrayRecord):
        return list(a.keys()) == list(b.keys()) and all(a[k].data == b[k].data for k in a.keys())
    return type(a) is type(b) and dict(a) == dict(b)


def carry(content: RecordDict, partitions: Sequence[int], num_partitions: int) -> RecordDict:
    """The content of one message for several partitions."""
    cohort = ConfigRecord({"partition-ids": [int(p) for p in partitions], "num-partitions": int(num_partitions)})
    return RecordDict({**content, COHORT: cohort})


def split(message: Message) -> list[tuple[int, Message]]:
    """A carried message as one message per partition, each as a pooled node receives it alone (its
    `partition` record naming the partition), sharing the carried records."""
    cohort = message.content[COHORT]
    shared = {key: record for key, record in message.content.items() if key != COHORT}
    num_partitions = int(cohort["num-partitions"])
    return [
        (int(p), Message(addressed(RecordDict(shared), int(p), num_partitions), metadata=copy.copy(message.metadata)))
        for p in cohort["partition-ids"]
    ]


def pack(replies: Sequence[Message]) -> RecordDict:
    """Every client's reply in one content: its records under `key@position`, an error as `error@position`."""
    packed = RecordDict()
    for position, reply in enumerate(replies):
        if reply.has_error():
            packed[f"{ERROR}@{position}"] = ConfigRecord(
                {"code": int(reply.error.code), "reason": str(reply.error.reason or "")}
            )
            continue
        for key, record in reply.content.items():
            packed[f"{key}@{position}"] = record
    return packed


def unpack(reply: Message | None, partitions: Sequence[int]) -> dict[int, Message | None]:
    """A carried message's reply as each partition's own: an error for all when the whole message failed,
    None for all when none came."""
    if reply is None:
        return dict.fromkeys(partitions)
    if reply.has_error():
        return {p: Message(reply.error, metadata=copy.copy(reply.metadata)) for p in partitions}
    own: dict[int, RecordDict] = {position: RecordDict() for position in range(len(partitions))}
    whole = {}  # records of the whole reply (fedsim.messages.retries): every answer's
    for key, record in reply.content.items():
        name, _, position = key.rpartition("@")
        if name:
            own[int(position)][name] = record
        else:
            whole[key] = record
    answers: dict[int, Message | None] = {}
    for position, partition in enumerate(partitions):
        records = own[position]
        if ERROR in records:
            error = Error(code=int(records[ERROR]["code"]), reason=str(records[ERROR]["reason"]))
        elif not len(records):
            error = Error(code=ErrorCode.UNKNOWN, reason=f"partition {partition}: missing from its node's reply")
        else:
            answers[partition] = Message(
                RecordDict({**records, **whole}) if whole else records, metadata=copy.copy(reply.metadata)
            )
            continue
        answers[partition] = Message(error, metadata=copy.copy(reply.metadata))
    return answers


def carried_cohort(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A Flower mod, the client's half: a carried message runs through the rest of the ClientApp once per
    partition, one after another, each exactly as if it had come alone; the node replies once with every answer.
    A client whose call raises gets its own error; the others still count."""
    if COHORT not in message.content:
        return call_next(message, context)
    guarded = replies_errors(call_next)
    return Message(pack([guarded(single, context) for _, single in split(message)]), reply_to=message)


def partitions_of(message: Message, context: Context) -> list[int]:
    """The partitions a message is for, as its node will serve them: a carried cohort, the one its `partition`
    record names (a pooled node), or the node's own."""
    if COHORT in message.content:
        return [int(p) for p in message.content[COHORT]["partition-ids"]]
    if PARTITION in message.content:
        return [int(message.content[PARTITION]["partition-id"])]
    return [int(context.node_config["partition-id"])]


def answers(reply: Message | None, sent: Message, partitions: list[int]) -> dict[int, Message | None]:
    """The server's half: the reply to a sent message as each of its partitions' own (a carried message's, taken
    apart)."""
    return unpack(reply, partitions) if COHORT in sent.content else {partitions[0]: reply}
