"""The answering proxy in front of the BigQuery emulator, through the official client: a refusal
answered before the emulator sees the request, a response field the emulator lacks added."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc

from emulators.bigquery import BigQueryEmulator
from emulators.proxy import Exchange, HttpAnswerProxy, Reply, bigquery_error

pytestmark = pytest.mark.emulator


def test_rules_answer_before_and_after_the_emulator(bigquery_emulator: BigQueryEmulator) -> None:
    dataset = bigquery_emulator.dataset()

    def refuse_queries(exchange: Exchange) -> Reply | None:
        if exchange.method == "POST" and "/queries" in exchange.path:
            return bigquery_error(400, "invalidQuery", "refused by the proxy")
        return None

    def elsewhere(exchange: Exchange) -> Reply | None:
        if exchange.method == "GET" and exchange.route.endswith(f"/datasets/{dataset}"):
            return Reply(exchange.status or 200, {**exchange.response_json(), "location": "EU"})
        return None

    with HttpAnswerProxy(
        bigquery_emulator.rest_endpoint, before=[refuse_queries], after=[elsewhere]
    ) as proxy:
        client = bigquery_emulator.client(proxy.endpoint)
        assert client.get_dataset(dataset).location == "EU"
        with pytest.raises(gexc.BadRequest, match="refused by the proxy") as refused:
            client.query_and_wait("SELECT 1", retry=None, job_retry=None)
        assert refused.value.errors[0]["reason"] == "invalidQuery"
    assert len(proxy.sent("GET", f"/datasets/{dataset}")) == 1
    (query,) = proxy.sent("POST", "/queries")
    assert query.json()["query"] == "SELECT 1" and query.status == 400
