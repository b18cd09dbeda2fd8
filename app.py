from whatsdesk import create_app, freeze_heap

app = create_app()
freeze_heap()  # the web process has loaded all it needs (see freeze_heap)
