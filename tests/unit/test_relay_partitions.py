"""The relay's key hashes: Kafka's default partitioner's, however many keys it has seen."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from crm_shared.messaging.relay import KeyHashes


def test_key_hashes_choose_the_default_partitioners_partition_beyond_what_they_keep() -> None:
    hashes = KeyHashes(size=16)
    partitioner = DefaultPartitioner()
    keys = [f"0192f3c4-5d6e-7f80-9a1b-{i:012x}".encode() for i in range(100)] + [b"", b"a"]
    for round_ in range(2):  # the second round finds some kept, some forgotten
        for key in keys:
            for count in (1, 3, 4, 12):
                parts = list(range(count))
                assert parts[hashes.of(key) % count] == partitioner(key, parts, parts), (
                    round_,
                    key,
                )
    assert len(hashes._known) <= 16
