def test_import_and_list(cli, models):
    src = models.get("classifier")
    r = cli("import", src, "--repo", "org/clf")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("imported org/clf@")
    r = cli("list", "--json")
    assert [x["name"] for x in __import__("json").loads(r.output)] == ["org/clf"]
