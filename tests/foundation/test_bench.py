from ddnn.bench.train_overhead import bench_train, bench_train_text


def test_bench_train_measures_both_loops_on_the_same_work():
    result = bench_train("ddnn", "synthetic", None, samples=256, repeats=2)
    assert result["samples"] == 256
    assert len(result["plain_s"]) == len(result["framework_s"]) == 2
    assert all(t > 0 for t in result["plain_s"] + result["framework_s"])
    assert result["ratio_median"] > 0
    assert "overhead ratio" in bench_train_text(result)
