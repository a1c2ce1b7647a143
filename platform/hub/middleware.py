"""Every answer under /api/ is JSON: an unknown path (404), a wrong method (405), a refused CSRF
check (403), a crash (500) and any other error page Django would render as HTML become
``{"error": <reason>}`` with the same status (and headers such as Allow)."""

from django.http import JsonResponse

API_PREFIX = "/api/"


def api_errors_as_json(get_response):
    def middleware(request):
        response = get_response(request)
        if (
            request.path.startswith(API_PREFIX)
            and response.status_code >= 400
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            json_response = JsonResponse({"error": response.reason_phrase.lower()}, status=response.status_code)
            for header in ("Allow", "Retry-After", "WWW-Authenticate"):
                if header in response:
                    json_response[header] = response[header]
            return json_response
        return response

    return middleware
