"""The baseline for the HTTP throughput benchmark: the least a functions-framework function does."""

import functions_framework


@functions_framework.http
def hello(request):  # type: ignore[no-untyped-def]
    return {"ok": True}
