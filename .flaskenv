# Read by `flask` when python-dotenv is installed (the test tools bring it): `flask keys ...`
# from the repository root; `flask --app api keys ...` works without it.
FLASK_APP=api
