"""Story 1, chat replies: one reply per batch of a chat's messages.

Messages that arrive while a reply is being composed form the next batch; ``idle`` waits
for the user to stop typing; ``clear`` forgets pending messages on a persona switch.
Run: python examples/chat_replies.py [STORE_URL]
"""

from __future__ import annotations

import sys
import threading
import time

import redbatch


def build(store: redbatch.Store, replies: list[tuple[str, list[str]]]) -> redbatch.Batcher:
    chat = redbatch.Batcher(store, "chat", max_items=20, max_wait=2.0, idle=0.2)

    @chat.handler
    def reply(batch: redbatch.Batch) -> None:
        texts = [message["text"] for message in batch.items]
        time.sleep(0.3)  # composing the reply: new messages meanwhile form the next batch
        replies.append((batch.key, texts))

    return chat


def main(url: str | None = None) -> list[tuple[str, list[str]]]:
    store = redbatch.connect(url)
    replies: list[tuple[str, list[str]]] = []
    chat = build(store, replies)
    worker = redbatch.Worker(store, [chat], concurrency=8, handle_signals=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()

    chat.add_many([("chat-1", {"text": "hi"}), ("chat-1", {"text": "are you there?"})])
    while not replies:  # the first reply is being composed...
        time.sleep(0.01)
    chat.add("chat-1", {"text": "also, one more thing"})  # ...this forms the next batch
    chat.add("chat-2", {"text": "switching persona soon"})
    chat.clear("chat-2")  # persona switch: pending messages are dropped
    chat.add("chat-2", {"text": "hello, new persona"})

    deadline = time.monotonic() + 10
    while len(replies) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    thread.join()
    for key, texts in replies:
        print(f"{key}: one reply to {texts}")
    store.close()
    return replies


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
