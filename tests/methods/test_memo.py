"""The shared process-wide memo: LRU by bytes and entries, digests that change with what determines a value."""
import numpy as np
import torch

from methods.memo import ArrayDigests, Memo, NetworkDigests, array_digest, in_memory_bytes, network_digest


def test_bytes_bound_drops_the_least_recently_used():
    memo = Memo(max_bytes=2 * 80)
    for key in "abc":
        memo.put(key, np.zeros(10))  # 80 bytes each
    assert [k for k, _ in memo.items()] == ["b", "c"]


def test_a_read_makes_an_entry_recent():
    memo = Memo(max_bytes=2 * 80)
    memo.put("a", np.zeros(10))
    memo.put("b", np.zeros(10))
    memo.get("a")
    memo.put("c", np.zeros(10))
    assert [k for k, _ in memo.items()] == ["a", "c"]


def test_the_newest_entry_stays_even_over_the_bound():
    memo = Memo(max_bytes=8)
    memo.put("big", np.zeros(100))
    assert "big" in memo


def test_entries_bound():
    memo = Memo(max_entries=1)
    memo.put("a", 1)
    memo.put("b", 2)
    assert [k for k, _ in memo.items()] == ["b"]


def test_a_missing_key_is_none():
    assert Memo().get("nothing") is None


def test_memory_mapped_arrays_hold_no_bytes(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(100))
    assert in_memory_bytes(np.load(tmp_path / "a.npy", mmap_mode="r")) == 0


def test_bytes_of_nested_values():
    assert in_memory_bytes((np.zeros(2), {"x": np.zeros(3, dtype=np.float32)})) == 16 + 12


def test_array_digest_changes_with_a_value():
    a = np.zeros((2, 3))
    b = a.copy()
    b[1, 2] = 1e-12
    assert array_digest(a) != array_digest(b)


def test_array_digest_changes_with_the_shape():
    assert array_digest(np.zeros((2, 3))) != array_digest(np.zeros((3, 2)))


def test_array_digest_of_a_tensor_equals_its_arrays():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert array_digest(torch.from_numpy(a)) == array_digest(a)


def test_array_digests_are_remembered_per_object():
    digests, a = ArrayDigests(), np.zeros(4)
    first = digests.digest(a)
    a[0] = 1.0  # outputs are never modified in place; the digest is the object's
    assert digests.digest(a) == first


def test_network_digest_changes_with_a_weight():
    net = torch.nn.Linear(3, 2)
    before = network_digest(net)
    with torch.no_grad():
        net.weight[0, 0] += 1e-6
    assert network_digest(net) != before


def test_network_digests_pickle_empty():
    import pickle

    digests = NetworkDigests()
    digests.digest(torch.nn.Linear(3, 2))
    assert pickle.loads(pickle.dumps(digests))._last is None


def test_a_network_trained_in_place_gets_a_new_digest():
    digests, net = NetworkDigests(), torch.nn.Linear(3, 2)
    before = digests.digest(net)
    with torch.no_grad():
        net.bias.add_(1.0)
    assert digests.digest(net) != before


def test_an_unchanged_network_keeps_its_digest():
    digests, net = NetworkDigests(), torch.nn.Linear(3, 2)
    assert digests.digest(net) == digests.digest(net)


def test_an_optimiser_step_gives_a_new_digest():
    digests, net = NetworkDigests(), torch.nn.Linear(3, 2)
    before = digests.digest(net)
    net(torch.ones(1, 3)).sum().backward()
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    assert digests.digest(net) != before
