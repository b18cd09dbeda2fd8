from whatsdesk import create_app

app = create_app()
