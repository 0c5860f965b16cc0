"""The relay's key hashes: Kafka's default partitioner's, however many keys it has seen."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from crm_shared.messaging.relay import key_hash


def test_key_hashes_choose_the_default_partitioners_partition_beyond_what_they_keep() -> None:
    partitioner = DefaultPartitioner()
    keys = [f"0192f3c4-5d6e-7f80-9a1b-{i:012x}".encode() for i in range(100)] + [b"", b"a"]
    kept = key_hash.cache_info().maxsize or 0
    for round_ in range(2):  # the second round finds them forgotten, then kept
        for key in keys:
            for count in (1, 3, 4, 12):
                parts = list(range(count))
                assert parts[key_hash(key) % count] == partitioner(key, parts, parts), (
                    round_,
                    key,
                )
        for i in range(kept):  # enough other keys to push these out
            key_hash(f"filler-{i}".encode())
    assert key_hash.cache_info().currsize <= 16_384
