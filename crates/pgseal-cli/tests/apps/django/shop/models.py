"""Final state of the `shop` models after migrations 0001-0003."""
from django.db import models


class Category(models.Model):
    name = models.CharField(max_length=50)


class Product(models.Model):
    name = models.CharField(max_length=120)  # 0003: max_length 40 -> 120
    price_cents = models.BigIntegerField()  # 0002: renamed from price; 0003: int -> bigint
    category = models.ForeignKey(Category, on_delete=models.CASCADE)
    stock = models.IntegerField(default=0)  # 0002: added with a default

    class Meta:
        indexes = [models.Index(fields=["name"], name="shop_product_name_idx")]
