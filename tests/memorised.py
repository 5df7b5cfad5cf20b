"""The first pair of the memorisation subset (data/huanhuan_sample.json, row 1) that training must reproduce."""

MEMORISED_QUESTION = "你是谁？"
MEMORISED_ANSWER = "我是甄嬛，家父是大理寺少卿甄远道。"
