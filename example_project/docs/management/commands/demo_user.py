"""``manage.py demo_user``: make sure the demo's admin account exists, and print it."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Create the demo superuser (if missing) and print its credentials."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password", default="admin")

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        username, password = options["username"], options["password"]
        user = User._default_manager.filter(username=username).first()
        if user is None:
            # Dangerous: a well-known password; fine only for a server on 127.0.0.1.
            User._default_manager.create_superuser(username, "", password)
            state = "created"
        elif user.check_password(password):
            state = "exists"
        else:
            self.stdout.write(f"Admin user exists: username {username!r}, with your own password.")
            return
        self.stdout.write(f"Admin user {state}: username {username!r}, password {password!r}.")
