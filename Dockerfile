FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt ./
COPY peers ./peers
RUN pip install --no-cache-dir -c constraints.txt -e ".[platform,peer]"
COPY . .
ENV PYTHONPATH=/app/platform:/app
RUN DFL_EMBEDDED=1 python manage.py collectstatic --noinput
EXPOSE 8000
