from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.shortcuts import redirect, render

from .forms import ProfileForm, SignupForm
from .models import Profile


def signup(request):
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            user = form.save()
            Profile.objects.create(user=user, payout_address=form.cleaned_data["payout_address"])
        login(request, user)
        messages.success(request, "Welcome! Register a node to take part in jobs, or create a job.")
        return redirect("home")
    return render(request, "accounts/signup.html", {"form": form})


@login_required
def profile(request):
    form = ProfileForm(
        request.POST or None, instance=Profile.for_user(request.user), initial={"email": request.user.email}
    )
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            form.save()
            request.user.email = form.cleaned_data["email"]
            request.user.save(update_fields=["email"])
        messages.success(request, "Profile saved.")
        return redirect("accounts:profile")
    return render(request, "accounts/profile.html", {"form": form})
