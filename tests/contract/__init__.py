"""The API's contract: the OpenAPI document, every problem, fuzzing, the Postman collection."""
