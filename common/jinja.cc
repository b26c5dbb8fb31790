#include "common/jinja.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <functional>
#include <map>
#include <optional>
#include <vector>

#include "common/status.h"
#include "common/str_cat.h"

namespace pinmoe::jinja {
namespace {

using Json = nlohmann::json;

// ---------------------------------------------------------------------------------------------------
// Values: Python-like, with reference semantics for lists, dicts and namespaces.
// ---------------------------------------------------------------------------------------------------

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion-ordered

struct Value {
  enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kNamespace, kCallable };
  Kind kind = Kind::kUndefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // string; for kCallable the builtin or macro name
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;
  std::shared_ptr<Value> self;     // bound method receiver
  const Template::Node* macro = nullptr;

  static Value None() { Value v; v.kind = Kind::kNone; return v; }
  static Value Bool(bool x) { Value v; v.kind = Kind::kBool; v.b = x; return v; }
  static Value Int(int64_t x) { Value v; v.kind = Kind::kInt; v.i = x; return v; }
  static Value Float(double x) { Value v; v.kind = Kind::kFloat; v.f = x; return v; }
  static Value Str(std::string x) { Value v; v.kind = Kind::kString; v.s = std::move(x); return v; }
  static Value NewList(List l = {}) { Value v; v.kind = Kind::kList; v.list = std::make_shared<List>(std::move(l)); return v; }
  static Value NewDict(Dict d = {}) { Value v; v.kind = Kind::kDict; v.dict = std::make_shared<Dict>(std::move(d)); return v; }
  static Value Builtin(std::string name, std::shared_ptr<Value> self = nullptr) {
    Value v; v.kind = Kind::kCallable; v.s = std::move(name); v.self = std::move(self); return v;
  }
  bool IsNumber() const { return kind == Kind::kInt || kind == Kind::kFloat || kind == Kind::kBool; }
  double Num() const { return kind == Kind::kFloat ? f : kind == Kind::kBool ? (b ? 1 : 0) : static_cast<double>(i); }
  bool IsMapping() const { return kind == Kind::kDict || kind == Kind::kNamespace; }
};

const Value* DictFind(const Dict& d, std::string_view key) {
  for (const auto& [k, v] : d) {
    if (k == key) return &v;
  }
  return nullptr;
}
void DictSet(Dict& d, const std::string& key, Value v) {
  for (auto& [k, old] : d) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  d.emplace_back(key, std::move(v));
}

Value FromJson(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null: return Value::None();
    case Json::value_t::boolean: return Value::Bool(j.get<bool>());
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned: return Value::Int(j.get<int64_t>());
    case Json::value_t::number_float: return Value::Float(j.get<double>());
    case Json::value_t::string: return Value::Str(j.get<std::string>());
    case Json::value_t::array: {
      List l;
      for (const auto& e : j) l.push_back(FromJson(e));
      return Value::NewList(std::move(l));
    }
    case Json::value_t::object: {
      Dict d;
      for (const auto& [k, v] : j.items()) d.emplace_back(k, FromJson(v));
      return Value::NewDict(std::move(d));
    }
    default: return Value();
  }
}

bool Truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone: return false;
    case Value::Kind::kBool: return v.b;
    case Value::Kind::kInt: return v.i != 0;
    case Value::Kind::kFloat: return v.f != 0;
    case Value::Kind::kString: return !v.s.empty();
    case Value::Kind::kList: return !v.list->empty();
    case Value::Kind::kDict: return !v.dict->empty();
    case Value::Kind::kNamespace:
    case Value::Kind::kCallable: return true;
  }
  return false;
}

std::string FloatRepr(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), x);
  std::string s(buf, r.ptr);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

std::string PyQuote(const std::string& s) {
  const char q = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  std::string out(1, q);
  for (char c : s) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c == q) {
          out += '\\';
          out += c;
        } else {
          out += c;
        }
    }
  }
  out += q;
  return out;
}

std::string Repr(const Value& v);

// str(v) as Python prints it.
std::string ToString(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined: return "";
    case Value::Kind::kNone: return "None";
    case Value::Kind::kBool: return v.b ? "True" : "False";
    case Value::Kind::kInt: return std::to_string(v.i);
    case Value::Kind::kFloat: return FloatRepr(v.f);
    case Value::Kind::kString: return v.s;
    default: return Repr(v);
  }
}

std::string Repr(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kString: return PyQuote(v.s);
    case Value::Kind::kList: {
      std::string out = "[";
      for (size_t i = 0; i < v.list->size(); ++i) out += (i ? ", " : "") + Repr((*v.list)[i]);
      return out + "]";
    }
    case Value::Kind::kDict: {
      std::string out = "{";
      for (size_t i = 0; i < v.dict->size(); ++i) {
        out += (i ? ", " : "") + PyQuote((*v.dict)[i].first) + ": " + Repr((*v.dict)[i].second);
      }
      return out + "}";
    }
    case Value::Kind::kNamespace: return "<Namespace>";
    case Value::Kind::kCallable: return "<function " + v.s + ">";
    default: return ToString(v);
  }
}

// json.dumps(v, ensure_ascii=False, indent=indent, sort_keys=sort_keys), as transformers' tojson.
void ToJson(const Value& v, int indent, bool sort_keys, int level, std::string* out) {
  auto newline = [&](int lvl) {
    if (indent >= 0) {
      out->push_back('\n');
      out->append(static_cast<size_t>(indent * lvl), ' ');
    }
  };
  switch (v.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone: *out += "null"; return;
    case Value::Kind::kBool: *out += v.b ? "true" : "false"; return;
    case Value::Kind::kInt: *out += std::to_string(v.i); return;
    case Value::Kind::kFloat: *out += std::isfinite(v.f) ? FloatRepr(v.f) : (std::isnan(v.f) ? "NaN" : (v.f > 0 ? "Infinity" : "-Infinity")); return;
    case Value::Kind::kString: {
      out->push_back('"');
      for (unsigned char c : v.s) {
        switch (c) {
          case '"': *out += "\\\""; break;
          case '\\': *out += "\\\\"; break;
          case '\n': *out += "\\n"; break;
          case '\r': *out += "\\r"; break;
          case '\t': *out += "\\t"; break;
          case '\b': *out += "\\b"; break;
          case '\f': *out += "\\f"; break;
          default:
            if (c < 0x20) {
              char buf[8];
              std::snprintf(buf, sizeof(buf), "\\u%04x", c);
              *out += buf;
            } else {
              out->push_back(static_cast<char>(c));
            }
        }
      }
      out->push_back('"');
      return;
    }
    case Value::Kind::kList: {
      if (v.list->empty()) {
        *out += "[]";
        return;
      }
      out->push_back('[');
      for (size_t i = 0; i < v.list->size(); ++i) {
        if (i) *out += indent >= 0 ? "," : ", ";
        newline(level + 1);
        ToJson((*v.list)[i], indent, sort_keys, level + 1, out);
      }
      newline(level);
      out->push_back(']');
      return;
    }
    case Value::Kind::kDict:
    case Value::Kind::kNamespace: {
      if (v.dict->empty()) {
        *out += "{}";
        return;
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& kv : *v.dict) items.push_back(&kv);
      if (sort_keys) {
        std::sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
      }
      out->push_back('{');
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) *out += indent >= 0 ? "," : ", ";
        newline(level + 1);
        ToJson(Value::Str(items[i]->first), indent, sort_keys, level + 1, out);
        *out += ": ";
        ToJson(items[i]->second, indent, sort_keys, level + 1, out);
      }
      newline(level);
      out->push_back('}');
      return;
    }
    case Value::Kind::kCallable: *out += "null"; return;
  }
}

bool Equal(const Value& a, const Value& b) {
  if (a.IsNumber() && b.IsNumber()) {
    if (a.kind == Value::Kind::kFloat || b.kind == Value::Kind::kFloat) return a.Num() == b.Num();
    return (a.kind == Value::Kind::kBool ? a.b : a.i) == (b.kind == Value::Kind::kBool ? b.b : b.i);
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::kUndefined:
    case Value::Kind::kNone: return true;
    case Value::Kind::kString: return a.s == b.s;
    case Value::Kind::kList:
      if (a.list->size() != b.list->size()) return false;
      for (size_t i = 0; i < a.list->size(); ++i) {
        if (!Equal((*a.list)[i], (*b.list)[i])) return false;
      }
      return true;
    case Value::Kind::kDict:
    case Value::Kind::kNamespace:
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, v] : *a.dict) {
        const Value* o = DictFind(*b.dict, k);
        if (o == nullptr || !Equal(v, *o)) return false;
      }
      return true;
    default: return a.dict == b.dict && a.s == b.s;
  }
}

// ---------------------------------------------------------------------------------------------------
// Expression tokens.
// ---------------------------------------------------------------------------------------------------

enum class Tok { kName, kInt, kFloat, kString, kOp, kEnd };

struct Token {
  Tok kind;
  std::string text;
  int line;
};

absl::Status SyntaxError(int line, std::string_view what) {
  return absl::InvalidArgumentError(StrCat("chat template line ", line, ": ", what));
}

absl::StatusOr<std::vector<Token>> Tokenize(std::string_view src, int line) {
  std::vector<Token> out;
  size_t i = 0;
  while (i < src.size()) {
    char c = src[i];
    if (c == '\n') ++line;
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
      continue;
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < src.size() && (std::isalnum(static_cast<unsigned char>(src[j])) || src[j] == '_')) ++j;
      out.push_back({Tok::kName, std::string(src.substr(i, j - i)), line});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      bool is_float = false;
      while (j < src.size() && (std::isdigit(static_cast<unsigned char>(src[j])) || src[j] == '_')) ++j;
      if (j + 1 < src.size() && src[j] == '.' && std::isdigit(static_cast<unsigned char>(src[j + 1]))) {
        is_float = true;
        ++j;
        while (j < src.size() && std::isdigit(static_cast<unsigned char>(src[j]))) ++j;
      }
      if (j < src.size() && (src[j] == 'e' || src[j] == 'E')) {
        is_float = true;
        ++j;
        if (j < src.size() && (src[j] == '+' || src[j] == '-')) ++j;
        while (j < src.size() && std::isdigit(static_cast<unsigned char>(src[j]))) ++j;
      }
      std::string t(src.substr(i, j - i));
      t.erase(std::remove(t.begin(), t.end(), '_'), t.end());
      out.push_back({is_float ? Tok::kFloat : Tok::kInt, t, line});
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string s;
      size_t j = i + 1;
      while (j < src.size() && src[j] != c) {
        if (src[j] == '\\' && j + 1 < src.size()) {
          char e = src[j + 1];
          switch (e) {
            case 'n': s += '\n'; break;
            case 't': s += '\t'; break;
            case 'r': s += '\r'; break;
            case '\\': s += '\\'; break;
            case '\'': s += '\''; break;
            case '"': s += '"'; break;
            case '0': s += '\0'; break;
            default: s += '\\'; s += e;
          }
          j += 2;
        } else {
          if (src[j] == '\n') ++line;
          s += src[j++];
        }
      }
      if (j >= src.size()) return SyntaxError(line, "unterminated string literal");
      out.push_back({Tok::kString, s, line});
      i = j + 1;
    } else {
      static const char* kOps[] = {"//", "**", "==", "!=", "<=", ">=", "(", ")", "[", "]", "{", "}", ".",
                                   ",", ":", "|", "~", "+", "-", "*", "/", "%", "<", ">", "="};
      bool matched = false;
      for (const char* op : kOps) {
        size_t n = std::char_traits<char>::length(op);
        if (src.compare(i, n, op) == 0) {
          out.push_back({Tok::kOp, op, line});
          i += n;
          matched = true;
          break;
        }
      }
      if (!matched) return SyntaxError(line, StrCat("unexpected character '", std::string(1, c), "'"));
    }
  }
  out.push_back({Tok::kEnd, "", line});
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Syntax tree.
// ---------------------------------------------------------------------------------------------------

struct Expr {
  enum class Kind { kLiteral, kName, kAttr, kItem, kSlice, kCall, kFilter, kTest, kNeg, kNot, kBinary,
                    kAnd, kOr, kCond, kList, kDict };
  Kind kind;
  int line = 0;
  std::string name;  // kName, kAttr, kFilter, kTest, kBinary (the operator)
  bool negated = false;  // kTest: "is not"
  Value literal;
  std::vector<std::unique_ptr<Expr>> args;  // operands / positional arguments / list items
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;
};

struct Template::Node {
  enum class Kind { kSequence, kText, kOutput, kIf, kFor, kSet, kSetBlock, kMacro, kBreak, kContinue };
  Kind kind = Kind::kSequence;
  int line = 0;
  std::string text;                          // kText; kSet/kSetBlock/kMacro: the name
  std::string attr;                          // kSet on a namespace attribute
  std::vector<std::string> targets;          // kFor loop variables; kMacro parameter names
  std::vector<std::unique_ptr<Expr>> exprs;  // kOutput/kSet: [value]; kIf: conditions; kFor: [iter, cond?]
                                             // kMacro: parameter defaults (null when none)
  std::vector<std::unique_ptr<Node>> children;  // kSequence: statements; kIf: bodies (+ else);
                                                // kFor: [body, else?]; kSetBlock/kMacro: [body]
  bool has_else = false;
  bool has_filter = false;
};

namespace {

using Node = Template::Node;

// ---------------------------------------------------------------------------------------------------
// Expression parser (Jinja precedence: or, and, not, comparisons, ~, + -, * / // %, **, unary, postfix
// and filters/tests).
// ---------------------------------------------------------------------------------------------------

class ExprParser {
 public:
  explicit ExprParser(std::vector<Token> toks) : t_(std::move(toks)) {}

  absl::StatusOr<std::unique_ptr<Expr>> ParseExpression() { return Conditional(); }
  // An expression without the trailing `if ... else ...` form (a for loop's iterable).
  absl::StatusOr<std::unique_ptr<Expr>> ParseOr() { return Or(); }
  const Token& Peek(size_t ahead = 0) const { return t_[std::min(pos_ + ahead, t_.size() - 1)]; }
  bool AtEnd() const { return Peek().kind == Tok::kEnd; }
  bool IsOp(std::string_view op, size_t ahead = 0) const {
    return Peek(ahead).kind == Tok::kOp && Peek(ahead).text == op;
  }
  bool IsName(std::string_view n, size_t ahead = 0) const {
    return Peek(ahead).kind == Tok::kName && Peek(ahead).text == n;
  }
  Token Next() { return t_[std::min(pos_++, t_.size() - 1)]; }
  absl::Status Expect(std::string_view op) {
    if (!IsOp(op)) return SyntaxError(Peek().line, StrCat("expected '", op, "' but found '", Peek().text, "'"));
    ++pos_;
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> ExpectName() {
    if (Peek().kind != Tok::kName) return SyntaxError(Peek().line, StrCat("expected a name, found '", Peek().text, "'"));
    return Next().text;
  }

 private:
  std::unique_ptr<Expr> Make(Expr::Kind k) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = Peek().line;
    return e;
  }
  absl::StatusOr<std::unique_ptr<Expr>> Binary(std::string op, std::unique_ptr<Expr> a, std::unique_ptr<Expr> b) {
    auto e = Make(Expr::Kind::kBinary);
    e->name = std::move(op);
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  absl::StatusOr<std::unique_ptr<Expr>> Conditional() {
    if (++depth_ > 100) return SyntaxError(Peek().line, "expression nested too deeply");
    ASSIGN_OR_RETURN(auto body, Or());
    while (IsName("if")) {
      Next();
      ASSIGN_OR_RETURN(auto cond, Or());
      auto e = Make(Expr::Kind::kCond);
      e->args.push_back(std::move(cond));
      e->args.push_back(std::move(body));
      if (IsName("else")) {
        Next();
        ASSIGN_OR_RETURN(auto other, Conditional());
        e->args.push_back(std::move(other));
      }
      body = std::move(e);
    }
    --depth_;
    return body;
  }
  absl::StatusOr<std::unique_ptr<Expr>> Or() {
    ASSIGN_OR_RETURN(auto a, And());
    while (IsName("or")) {
      Next();
      ASSIGN_OR_RETURN(auto b, And());
      auto e = Make(Expr::Kind::kOr);
      e->args.push_back(std::move(a));
      e->args.push_back(std::move(b));
      a = std::move(e);
    }
    return a;
  }
  absl::StatusOr<std::unique_ptr<Expr>> And() {
    ASSIGN_OR_RETURN(auto a, Not());
    while (IsName("and")) {
      Next();
      ASSIGN_OR_RETURN(auto b, Not());
      auto e = Make(Expr::Kind::kAnd);
      e->args.push_back(std::move(a));
      e->args.push_back(std::move(b));
      a = std::move(e);
    }
    return a;
  }
  absl::StatusOr<std::unique_ptr<Expr>> Not() {
    if (IsName("not")) {
      Next();
      if (++depth_ > 100) return SyntaxError(Peek().line, "expression nested too deeply");
      ASSIGN_OR_RETURN(auto a, Not());
      --depth_;
      auto e = Make(Expr::Kind::kNot);
      e->args.push_back(std::move(a));
      return e;
    }
    return Compare();
  }
  absl::StatusOr<std::unique_ptr<Expr>> Compare() {
    ASSIGN_OR_RETURN(auto a, Concat());
    while (true) {
      std::string op;
      if (Peek().kind == Tok::kOp && (Peek().text == "==" || Peek().text == "!=" || Peek().text == "<" ||
                                      Peek().text == ">" || Peek().text == "<=" || Peek().text == ">=")) {
        op = Next().text;
      } else if (IsName("in")) {
        Next();
        op = "in";
      } else if (IsName("not") && IsName("in", 1)) {
        Next();
        Next();
        op = "not in";
      } else {
        return a;
      }
      ASSIGN_OR_RETURN(auto b, Concat());
      ASSIGN_OR_RETURN(a, Binary(op, std::move(a), std::move(b)));
    }
  }
  absl::StatusOr<std::unique_ptr<Expr>> Concat() {
    ASSIGN_OR_RETURN(auto a, Sum());
    while (IsOp("~")) {
      Next();
      ASSIGN_OR_RETURN(auto b, Sum());
      ASSIGN_OR_RETURN(a, Binary("~", std::move(a), std::move(b)));
    }
    return a;
  }
  absl::StatusOr<std::unique_ptr<Expr>> Sum() {
    ASSIGN_OR_RETURN(auto a, Product());
    while (IsOp("+") || IsOp("-")) {
      std::string op = Next().text;
      ASSIGN_OR_RETURN(auto b, Product());
      ASSIGN_OR_RETURN(a, Binary(op, std::move(a), std::move(b)));
    }
    return a;
  }
  absl::StatusOr<std::unique_ptr<Expr>> Product() {
    ASSIGN_OR_RETURN(auto a, Power());
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      std::string op = Next().text;
      ASSIGN_OR_RETURN(auto b, Power());
      ASSIGN_OR_RETURN(a, Binary(op, std::move(a), std::move(b)));
    }
    return a;
  }
  absl::StatusOr<std::unique_ptr<Expr>> Power() {
    ASSIGN_OR_RETURN(auto a, Unary());
    while (IsOp("**")) {
      Next();
      ASSIGN_OR_RETURN(auto b, Unary());
      ASSIGN_OR_RETURN(a, Binary("**", std::move(a), std::move(b)));
    }
    return a;
  }
  absl::StatusOr<std::unique_ptr<Expr>> Unary() {
    if (IsOp("-") || IsOp("+")) {
      bool neg = Next().text == "-";
      if (++depth_ > 100) return SyntaxError(Peek().line, "expression nested too deeply");
      ASSIGN_OR_RETURN(auto a, Unary());
      --depth_;
      if (!neg) return a;
      auto e = Make(Expr::Kind::kNeg);
      e->args.push_back(std::move(a));
      return e;
    }
    ASSIGN_OR_RETURN(auto a, Primary());
    ASSIGN_OR_RETURN(a, Postfix(std::move(a)));
    return FiltersAndTests(std::move(a));
  }
  absl::Status Arguments(Expr* call) {
    RETURN_IF_ERROR(Expect("("));
    while (!IsOp(")")) {
      if (Peek().kind == Tok::kName && IsOp("=", 1)) {
        std::string key = Next().text;
        Next();
        ASSIGN_OR_RETURN(auto v, Conditional());
        call->kwargs.emplace_back(key, std::move(v));
      } else {
        ASSIGN_OR_RETURN(auto v, Conditional());
        call->args.push_back(std::move(v));
      }
      if (!IsOp(",")) break;
      Next();
    }
    return Expect(")");
  }
  absl::StatusOr<std::unique_ptr<Expr>> Postfix(std::unique_ptr<Expr> a) {
    while (true) {
      if (IsOp(".")) {
        Next();
        auto e = Make(Expr::Kind::kAttr);
        ASSIGN_OR_RETURN(e->name, ExpectName());
        e->args.push_back(std::move(a));
        a = std::move(e);
      } else if (IsOp("[")) {
        Next();
        // Subscript or slice [a:b:c].
        std::unique_ptr<Expr> parts[3];
        int colons = 0;
        while (!IsOp("]")) {
          if (IsOp(":")) {
            Next();
            if (++colons > 2) return SyntaxError(Peek().line, "bad slice");
            continue;
          }
          ASSIGN_OR_RETURN(parts[colons], Conditional());
        }
        RETURN_IF_ERROR(Expect("]"));
        if (colons == 0) {
          if (!parts[0]) return SyntaxError(Peek().line, "empty subscript");
          auto e = Make(Expr::Kind::kItem);
          e->args.push_back(std::move(a));
          e->args.push_back(std::move(parts[0]));
          a = std::move(e);
        } else {
          auto e = Make(Expr::Kind::kSlice);
          e->args.push_back(std::move(a));
          for (auto& p : parts) e->args.push_back(std::move(p));
          a = std::move(e);
        }
      } else if (IsOp("(")) {
        auto e = Make(Expr::Kind::kCall);
        e->args.push_back(std::move(a));
        RETURN_IF_ERROR(Arguments(e.get()));
        a = std::move(e);
      } else {
        return a;
      }
    }
  }
  absl::StatusOr<std::unique_ptr<Expr>> FiltersAndTests(std::unique_ptr<Expr> a) {
    while (true) {
      if (IsOp("|")) {
        Next();
        auto e = Make(Expr::Kind::kFilter);
        ASSIGN_OR_RETURN(e->name, ExpectName());
        e->args.push_back(std::move(a));
        if (IsOp("(")) RETURN_IF_ERROR(Arguments(e.get()));
        a = std::move(e);
      } else if (IsName("is")) {
        Next();
        auto e = Make(Expr::Kind::kTest);
        if (IsName("not")) {
          Next();
          e->negated = true;
        }
        ASSIGN_OR_RETURN(e->name, ExpectName());
        e->args.push_back(std::move(a));
        if (IsOp("(")) {
          RETURN_IF_ERROR(Arguments(e.get()));
        } else if (Peek().kind == Tok::kString || Peek().kind == Tok::kInt || Peek().kind == Tok::kFloat ||
                   (Peek().kind == Tok::kName && !IsName("and") && !IsName("or") && !IsName("else") &&
                    !IsName("if") && !IsName("is") && !IsName("in") && !IsName("not"))) {
          ASSIGN_OR_RETURN(auto arg, Primary());  // `x is divisibleby 3`, `x is sameas none`
          e->args.push_back(std::move(arg));
        }
        a = std::move(e);
      } else {
        return a;
      }
    }
  }
  absl::StatusOr<std::unique_ptr<Expr>> Primary() {
    const Token tok = Peek();
    switch (tok.kind) {
      case Tok::kInt: {
        Next();
        auto e = Make(Expr::Kind::kLiteral);
        int64_t v = 0;
        auto r = std::from_chars(tok.text.data(), tok.text.data() + tok.text.size(), v);
        if (r.ec != std::errc()) return SyntaxError(tok.line, "integer literal out of range");
        e->literal = Value::Int(v);
        return e;
      }
      case Tok::kFloat: {
        Next();
        auto e = Make(Expr::Kind::kLiteral);
        e->literal = Value::Float(std::strtod(tok.text.c_str(), nullptr));
        return e;
      }
      case Tok::kString: {
        Next();
        auto e = Make(Expr::Kind::kLiteral);
        std::string s = tok.text;
        while (Peek().kind == Tok::kString) s += Next().text;  // adjacent literals concatenate
        e->literal = Value::Str(s);
        return e;
      }
      case Tok::kName: {
        Next();
        auto e = Make(Expr::Kind::kLiteral);
        if (tok.text == "true" || tok.text == "True") {
          e->literal = Value::Bool(true);
        } else if (tok.text == "false" || tok.text == "False") {
          e->literal = Value::Bool(false);
        } else if (tok.text == "none" || tok.text == "None") {
          e->literal = Value::None();
        } else {
          e->kind = Expr::Kind::kName;
          e->name = tok.text;
        }
        return e;
      }
      case Tok::kOp: {
        if (tok.text == "(") {
          Next();
          ASSIGN_OR_RETURN(auto inner, Conditional());
          if (IsOp(",")) {  // a tuple: treated as a list
            auto e = Make(Expr::Kind::kList);
            e->args.push_back(std::move(inner));
            while (IsOp(",")) {
              Next();
              if (IsOp(")")) break;
              ASSIGN_OR_RETURN(auto item, Conditional());
              e->args.push_back(std::move(item));
            }
            inner = std::move(e);
          }
          RETURN_IF_ERROR(Expect(")"));
          return inner;
        }
        if (tok.text == "[") {
          Next();
          auto e = Make(Expr::Kind::kList);
          while (!IsOp("]")) {
            ASSIGN_OR_RETURN(auto item, Conditional());
            e->args.push_back(std::move(item));
            if (!IsOp(",")) break;
            Next();
          }
          RETURN_IF_ERROR(Expect("]"));
          return e;
        }
        if (tok.text == "{") {
          Next();
          auto e = Make(Expr::Kind::kDict);
          while (!IsOp("}")) {
            ASSIGN_OR_RETURN(auto key, Conditional());
            RETURN_IF_ERROR(Expect(":"));
            ASSIGN_OR_RETURN(auto val, Conditional());
            e->args.push_back(std::move(key));
            e->args.push_back(std::move(val));
            if (!IsOp(",")) break;
            Next();
          }
          RETURN_IF_ERROR(Expect("}"));
          return e;
        }
        break;
      }
      case Tok::kEnd: return SyntaxError(tok.line, "unexpected end of expression");
    }
    return SyntaxError(tok.line, StrCat("unexpected '", tok.text, "'"));
  }

  std::vector<Token> t_;
  size_t pos_ = 0;
  int depth_ = 0;
};

// ---------------------------------------------------------------------------------------------------
// Template source -> segments (with trim_blocks, lstrip_blocks and '-' whitespace control) -> tree.
// ---------------------------------------------------------------------------------------------------

struct Segment {
  enum class Kind { kText, kExpr, kStmt } kind;
  std::string text;
  int line;
};

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

absl::StatusOr<std::vector<Segment>> Split(std::string_view src) {
  std::vector<Segment> out;
  size_t pos = 0;
  int line = 1;
  bool strip_next = false, trim_newline = false;
  auto count_lines = [](std::string_view s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); };
  auto push_text = [&](std::string text) {
    if (strip_next) {
      size_t k = 0;
      while (k < text.size() && IsSpace(text[k])) ++k;
      text.erase(0, k);
    } else if (trim_newline) {
      if (text.rfind("\r\n", 0) == 0) {
        text.erase(0, 2);
      } else if (!text.empty() && text[0] == '\n') {
        text.erase(0, 1);
      }
    }
    strip_next = trim_newline = false;
    out.push_back({Segment::Kind::kText, std::move(text), line});
  };
  while (pos < src.size()) {
    size_t open = src.find('{', pos);
    while (open != std::string_view::npos && open + 1 < src.size() && src[open + 1] != '{' &&
           src[open + 1] != '%' && src[open + 1] != '#') {
      open = src.find('{', open + 1);
    }
    if (open == std::string_view::npos || open + 1 >= src.size()) {
      push_text(std::string(src.substr(pos)));
      break;
    }
    const char type = src[open + 1];
    std::string text(src.substr(pos, open - pos));
    const char mod = open + 2 < src.size() ? src[open + 2] : ' ';
    if (mod == '-') {
      while (!text.empty() && IsSpace(text.back())) text.pop_back();
    } else if (type != '{' && mod != '+') {
      // lstrip_blocks: drop spaces and tabs between the line start and a block or comment tag. The
      // chunk is still raw here (trim_blocks has not removed its leading newline yet).
      size_t k = text.size();
      while (k > 0 && (text[k - 1] == ' ' || text[k - 1] == '\t')) --k;
      const bool at_line_start = k > 0 ? text[k - 1] == '\n' : (pos == 0 || src[pos - 1] == '\n');
      if (at_line_start) text.erase(k);
    }
    push_text(std::move(text));
    line += count_lines(src.substr(pos, open - pos));
    const std::string_view close = type == '{' ? "}}" : type == '%' ? "%}" : "#}";
    size_t body_start = open + 2 + ((mod == '-' || mod == '+') ? 1 : 0);
    size_t end;
    if (type == '#') {
      end = src.find(close, body_start);
    } else {  // find the closing delimiter outside string literals
      end = std::string_view::npos;
      char quote = 0;
      for (size_t k = body_start; k + 1 < src.size(); ++k) {
        if (quote) {
          if (src[k] == '\\') {
            ++k;
          } else if (src[k] == quote) {
            quote = 0;
          }
        } else if (src[k] == '\'' || src[k] == '"') {
          quote = src[k];
        } else if (src.compare(k, 2, close) == 0) {
          end = k;
          break;
        }
      }
    }
    if (end == std::string_view::npos) {
      return SyntaxError(line, StrCat("'", std::string(1, '{'), std::string(1, type), "' is never closed"));
    }
    size_t body_end = end;
    bool strip_after = false;
    if (body_end > body_start && src[body_end - 1] == '-') {
      --body_end;
      strip_after = true;
    } else if (body_end > body_start && src[body_end - 1] == '+') {
      --body_end;
    }
    std::string body(src.substr(body_start, body_end - body_start));
    if (type == '{') {
      out.push_back({Segment::Kind::kExpr, body, line});
    } else if (type == '%') {
      // {% raw %}...{% endraw %}: verbatim.
      std::string trimmed = body;
      while (!trimmed.empty() && IsSpace(trimmed.back())) trimmed.pop_back();
      while (!trimmed.empty() && IsSpace(trimmed.front())) trimmed.erase(0, 1);
      if (trimmed == "raw") {
        size_t endraw = src.find("endraw", end);
        size_t endraw_close = endraw == std::string_view::npos ? endraw : src.find("%}", endraw);
        size_t endraw_open = endraw == std::string_view::npos ? endraw : src.rfind("{%", endraw);
        if (endraw_close == std::string_view::npos || endraw_open == std::string_view::npos) {
          return SyntaxError(line, "{% raw %} without {% endraw %}");
        }
        out.push_back({Segment::Kind::kText, std::string(src.substr(end + 2, endraw_open - end - 2)), line});
        line += count_lines(src.substr(open, endraw_close + 2 - open));
        pos = endraw_close + 2;
        continue;
      }
      out.push_back({Segment::Kind::kStmt, body, line});
    }
    line += count_lines(src.substr(open, end + 2 - open));
    pos = end + 2;
    strip_next = strip_after;
    trim_newline = !strip_after && type != '{';  // trim_blocks
  }
  return out;
}

class TreeBuilder {
 public:
  explicit TreeBuilder(std::vector<Segment> segs) : segs_(std::move(segs)) {}

  // Parses statements until one of `stops` (a block keyword) is met; returns the keyword found.
  absl::StatusOr<std::string> Block(Node* seq, const std::vector<std::string>& stops, int depth) {
    if (depth > 64) return SyntaxError(Line(), "blocks nested too deeply");
    while (i_ < segs_.size()) {
      const Segment& s = segs_[i_];
      if (s.kind == Segment::Kind::kText) {
        if (!s.text.empty()) {
          auto n = std::make_unique<Node>();
          n->kind = Node::Kind::kText;
          n->text = s.text;
          seq->children.push_back(std::move(n));
        }
        ++i_;
        continue;
      }
      ASSIGN_OR_RETURN(auto toks, Tokenize(s.text, s.line));
      ExprParser p(std::move(toks));
      if (s.kind == Segment::Kind::kExpr) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Kind::kOutput;
        n->line = s.line;
        ASSIGN_OR_RETURN(auto e, p.ParseExpression());
        if (!p.AtEnd()) return SyntaxError(s.line, StrCat("unexpected '", p.Peek().text, "' in {{ }}"));
        n->exprs.push_back(std::move(e));
        seq->children.push_back(std::move(n));
        ++i_;
        continue;
      }
      if (p.Peek().kind != Tok::kName) return SyntaxError(s.line, "a {% %} tag without a keyword");
      const std::string kw = p.Peek().text;
      if (std::find(stops.begin(), stops.end(), kw) != stops.end()) return kw;  // the caller consumes it
      ++i_;
      p.Next();
      ASSIGN_OR_RETURN(auto node, Statement(kw, p, s.line, depth));
      if (node) seq->children.push_back(std::move(node));
    }
    if (!stops.empty()) return SyntaxError(Line(), StrCat("missing {% ", stops.back(), " %}"));
    return std::string();
  }

 private:
  int Line() const { return i_ < segs_.size() ? segs_[i_].line : (segs_.empty() ? 1 : segs_.back().line); }

  // Consumes the stop tag the last Block() ended on and returns a parser over its remaining tokens.
  absl::StatusOr<ExprParser> TakeTag() {
    const Segment& s = segs_[i_++];
    ASSIGN_OR_RETURN(auto toks, Tokenize(s.text, s.line));
    ExprParser p(std::move(toks));
    p.Next();
    return p;
  }

  absl::StatusOr<std::unique_ptr<Node>> Statement(const std::string& kw, ExprParser& p, int line, int depth) {
    auto n = std::make_unique<Node>();
    n->line = line;
    auto end_of_tag = [&]() -> absl::Status {
      if (!p.AtEnd()) return SyntaxError(line, StrCat("unexpected '", p.Peek().text, "' in {% ", kw, " %}"));
      return absl::OkStatus();
    };
    if (kw == "if") {
      n->kind = Node::Kind::kIf;
      ASSIGN_OR_RETURN(auto cond, p.ParseExpression());
      RETURN_IF_ERROR(end_of_tag());
      n->exprs.push_back(std::move(cond));
      while (true) {
        auto body = std::make_unique<Node>();
        ASSIGN_OR_RETURN(std::string stop, Block(body.get(), {"elif", "else", "endif"}, depth + 1));
        n->children.push_back(std::move(body));
        ASSIGN_OR_RETURN(ExprParser tag, TakeTag());
        if (stop == "endif") break;
        if (stop == "else") {
          n->has_else = true;
          auto else_body = std::make_unique<Node>();
          ASSIGN_OR_RETURN(std::string s2, Block(else_body.get(), {"endif"}, depth + 1));
          (void)s2;
          n->children.push_back(std::move(else_body));
          RETURN_IF_ERROR(TakeTag().status());
          break;
        }
        ASSIGN_OR_RETURN(auto c2, tag.ParseExpression());
        n->exprs.push_back(std::move(c2));
      }
      return n;
    }
    if (kw == "for") {
      n->kind = Node::Kind::kFor;
      ASSIGN_OR_RETURN(std::string first, p.ExpectName());
      n->targets.push_back(first);
      while (p.IsOp(",")) {
        p.Next();
        ASSIGN_OR_RETURN(std::string more, p.ExpectName());
        n->targets.push_back(more);
      }
      if (!p.IsName("in")) return SyntaxError(line, "expected 'in' in {% for %}");
      p.Next();
      // The iterable stops before a trailing `if` filter.
      ASSIGN_OR_RETURN(auto iter, ParseForIterable(p));
      n->exprs.push_back(std::move(iter));
      if (p.IsName("if")) {
        p.Next();
        ASSIGN_OR_RETURN(auto cond, p.ParseExpression());
        n->exprs.push_back(std::move(cond));
        n->has_filter = true;
      }
      if (p.IsName("recursive")) return SyntaxError(line, "recursive loops are not supported");
      RETURN_IF_ERROR(end_of_tag());
      auto body = std::make_unique<Node>();
      ASSIGN_OR_RETURN(std::string stop, Block(body.get(), {"else", "endfor"}, depth + 1));
      n->children.push_back(std::move(body));
      RETURN_IF_ERROR(TakeTag().status());
      if (stop == "else") {
        n->has_else = true;
        auto else_body = std::make_unique<Node>();
        RETURN_IF_ERROR(Block(else_body.get(), {"endfor"}, depth + 1).status());
        n->children.push_back(std::move(else_body));
        RETURN_IF_ERROR(TakeTag().status());
      }
      return n;
    }
    if (kw == "set") {
      ASSIGN_OR_RETURN(n->text, p.ExpectName());
      if (p.IsOp(".")) {
        p.Next();
        ASSIGN_OR_RETURN(n->attr, p.ExpectName());
      }
      if (p.AtEnd()) {  // {% set x %}...{% endset %}
        if (!n->attr.empty()) return SyntaxError(line, "block set of an attribute is not supported");
        n->kind = Node::Kind::kSetBlock;
        auto body = std::make_unique<Node>();
        RETURN_IF_ERROR(Block(body.get(), {"endset"}, depth + 1).status());
        RETURN_IF_ERROR(TakeTag().status());
        n->children.push_back(std::move(body));
        return n;
      }
      n->kind = Node::Kind::kSet;
      if (p.IsOp(",")) return SyntaxError(line, "tuple assignment in {% set %} is not supported");
      RETURN_IF_ERROR(p.Expect("="));
      ASSIGN_OR_RETURN(auto v, p.ParseExpression());
      RETURN_IF_ERROR(end_of_tag());
      n->exprs.push_back(std::move(v));
      return n;
    }
    if (kw == "macro") {
      n->kind = Node::Kind::kMacro;
      ASSIGN_OR_RETURN(n->text, p.ExpectName());
      RETURN_IF_ERROR(p.Expect("("));
      while (!p.IsOp(")")) {
        ASSIGN_OR_RETURN(std::string param, p.ExpectName());
        n->targets.push_back(param);
        if (p.IsOp("=")) {
          p.Next();
          ASSIGN_OR_RETURN(auto def, p.ParseExpression());
          n->exprs.push_back(std::move(def));
        } else {
          n->exprs.push_back(nullptr);
        }
        if (!p.IsOp(",")) break;
        p.Next();
      }
      RETURN_IF_ERROR(p.Expect(")"));
      RETURN_IF_ERROR(end_of_tag());
      auto body = std::make_unique<Node>();
      RETURN_IF_ERROR(Block(body.get(), {"endmacro"}, depth + 1).status());
      RETURN_IF_ERROR(TakeTag().status());
      n->children.push_back(std::move(body));
      return n;
    }
    if (kw == "break" || kw == "continue") {
      n->kind = kw == "break" ? Node::Kind::kBreak : Node::Kind::kContinue;
      RETURN_IF_ERROR(end_of_tag());
      return n;
    }
    if (kw == "generation") {  // transformers' assistant-mask marker: transparent here
      n->kind = Node::Kind::kSequence;
      RETURN_IF_ERROR(Block(n.get(), {"endgeneration"}, depth + 1).status());
      RETURN_IF_ERROR(TakeTag().status());
      return n;
    }
    return SyntaxError(line, StrCat("unsupported tag {% ", kw, " %}"));
  }

  absl::StatusOr<std::unique_ptr<Expr>> ParseForIterable(ExprParser& p) {
    // `for x in xs if cond`: parse an or-expression so that `if` is left for the loop filter.
    return p.ParseOr();
  }

  std::vector<Segment> segs_;
  size_t i_ = 0;
};

// ---------------------------------------------------------------------------------------------------
// Rendering.
// ---------------------------------------------------------------------------------------------------

enum class Flow { kNormal, kBreak, kContinue };

class Renderer {
 public:
  explicit Renderer(const Limits& limits) : limits_(limits) {}

  absl::Status Render(const Node& n, std::string* out, Flow* flow) {
    RETURN_IF_ERROR(Step(n.line));
    switch (n.kind) {
      case Node::Kind::kSequence:
        for (const auto& c : n.children) {
          RETURN_IF_ERROR(Render(*c, out, flow));
          if (*flow != Flow::kNormal) return absl::OkStatus();
        }
        return absl::OkStatus();
      case Node::Kind::kText:
        return Append(out, n.text);
      case Node::Kind::kOutput: {
        ASSIGN_OR_RETURN(Value v, Eval(*n.exprs[0]));
        return Append(out, ToString(v));
      }
      case Node::Kind::kIf:
        for (size_t k = 0; k < n.exprs.size(); ++k) {
          ASSIGN_OR_RETURN(Value c, Eval(*n.exprs[k]));
          if (Truthy(c)) return Render(*n.children[k], out, flow);
        }
        if (n.has_else) return Render(*n.children.back(), out, flow);
        return absl::OkStatus();
      case Node::Kind::kFor:
        return RenderFor(n, out, flow);
      case Node::Kind::kSet: {
        ASSIGN_OR_RETURN(Value v, Eval(*n.exprs[0]));
        if (n.attr.empty()) {
          scopes_.back()[n.text] = std::move(v);
          return absl::OkStatus();
        }
        Value target = Lookup(n.text);
        if (target.kind != Value::Kind::kNamespace) {
          return RenderError(n.line, StrCat("cannot set attribute '", n.attr, "' of '", n.text,
                                            "', which is not a namespace()"));
        }
        DictSet(*target.dict, n.attr, std::move(v));
        return absl::OkStatus();
      }
      case Node::Kind::kSetBlock: {
        std::string captured;
        Flow f = Flow::kNormal;
        RETURN_IF_ERROR(Render(*n.children[0], &captured, &f));
        scopes_.back()[n.text] = Value::Str(std::move(captured));
        return absl::OkStatus();
      }
      case Node::Kind::kMacro: {
        Value m = Value::Builtin(n.text);
        m.macro = &n;
        scopes_.back()[n.text] = std::move(m);
        return absl::OkStatus();
      }
      case Node::Kind::kBreak:
      case Node::Kind::kContinue:
        if (loop_depth_ == 0) return RenderError(n.line, "{% break %} or {% continue %} outside a loop");
        *flow = n.kind == Node::Kind::kBreak ? Flow::kBreak : Flow::kContinue;
        return absl::OkStatus();
    }
    return absl::OkStatus();
  }

  void PushGlobals(const Json& ctx) {
    scopes_.emplace_back();
    for (const auto& [k, v] : ctx.items()) scopes_.back()[k] = FromJson(v);
  }

 private:
  absl::Status RenderError(int line, std::string_view what) {
    return absl::InvalidArgumentError(StrCat("chat template line ", line, ": ", what));
  }
  absl::Status Step(int line) {
    if (++steps_ > limits_.max_steps) {
      return absl::ResourceExhaustedError(StrCat("chat template line ", line, ": rendering exceeded ",
                                                 limits_.max_steps, " steps (does it loop forever?)"));
    }
    return absl::OkStatus();
  }
  absl::Status Append(std::string* out, std::string_view s) {
    if (out->size() + s.size() > limits_.max_output_bytes) {
      return absl::ResourceExhaustedError(StrCat("chat template output exceeds ", limits_.max_output_bytes, " bytes"));
    }
    out->append(s);
    return absl::OkStatus();
  }
  absl::Status CheckString(const std::string& s, int line) {
    if (s.size() > limits_.max_output_bytes) {
      return RenderError(line, StrCat("a string exceeds ", limits_.max_output_bytes, " bytes"));
    }
    return absl::OkStatus();
  }
  absl::Status CheckList(size_t n, int line) {
    if (n > limits_.max_list_items) return RenderError(line, StrCat("a list exceeds ", limits_.max_list_items, " items"));
    return absl::OkStatus();
  }

  Value Lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    static const char* kBuiltins[] = {"namespace", "range", "raise_exception", "dict", "strftime_now"};
    for (const char* b : kBuiltins) {
      if (name == b) return Value::Builtin(name);
    }
    return Value();
  }

  absl::Status RenderFor(const Node& n, std::string* out, Flow* flow) {
    ASSIGN_OR_RETURN(Value seq, Eval(*n.exprs[0]));
    List items;
    if (seq.kind == Value::Kind::kList) {
      items = *seq.list;
    } else if (seq.kind == Value::Kind::kDict) {
      for (const auto& [k, v] : *seq.dict) items.push_back(Value::Str(k));
    } else if (seq.kind == Value::Kind::kString) {
      // Iterate code points.
      for (size_t k = 0; k < seq.s.size();) {
        size_t len = 1;
        unsigned char c = static_cast<unsigned char>(seq.s[k]);
        if (c >= 0xf0) len = 4; else if (c >= 0xe0) len = 3; else if (c >= 0xc0) len = 2;
        items.push_back(Value::Str(seq.s.substr(k, len)));
        k += len;
      }
    } else if (seq.kind != Value::Kind::kUndefined && seq.kind != Value::Kind::kNone) {
      return RenderError(n.line, "{% for %} over something that is not a list, dict or string");
    }
    scopes_.emplace_back();
    ++loop_depth_;
    if (n.has_filter) {  // the loop filter sees each item but not `loop`
      List kept;
      for (const Value& item : items) {
        RETURN_IF_ERROR(Bind(n, item));
        ASSIGN_OR_RETURN(Value keep, Eval(*n.exprs[1]));
        if (Truthy(keep)) kept.push_back(item);
      }
      items = std::move(kept);
    }
    const int64_t len = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < len; ++k) {
      RETURN_IF_ERROR(Bind(n, items[k]));
      Dict loop = {{"index0", Value::Int(k)},
                   {"index", Value::Int(k + 1)},
                   {"revindex0", Value::Int(len - k - 1)},
                   {"revindex", Value::Int(len - k)},
                   {"first", Value::Bool(k == 0)},
                   {"last", Value::Bool(k == len - 1)},
                   {"length", Value::Int(len)},
                   {"previtem", k > 0 ? items[k - 1] : Value()},
                   {"nextitem", k + 1 < len ? items[k + 1] : Value()}};
      scopes_.back()["loop"] = Value::NewDict(std::move(loop));
      Flow f = Flow::kNormal;
      RETURN_IF_ERROR(Render(*n.children[0], out, &f));
      if (f == Flow::kBreak) break;
    }
    --loop_depth_;
    scopes_.pop_back();
    if (len == 0 && n.has_else) return Render(*n.children[1], out, flow);
    return absl::OkStatus();
  }

  absl::Status Bind(const Node& n, const Value& item) {
    if (n.targets.size() == 1) {
      scopes_.back()[n.targets[0]] = item;
      return absl::OkStatus();
    }
    if (item.kind != Value::Kind::kList || item.list->size() != n.targets.size()) {
      return RenderError(n.line, StrCat("cannot unpack an item into ", n.targets.size(), " loop variables"));
    }
    for (size_t k = 0; k < n.targets.size(); ++k) scopes_.back()[n.targets[k]] = (*item.list)[k];
    return absl::OkStatus();
  }

  absl::StatusOr<Value> Eval(const Expr& e) {
    RETURN_IF_ERROR(Step(e.line));
    if (++depth_ > limits_.max_depth) return RenderError(e.line, "evaluation nested too deeply");
    absl::StatusOr<Value> v = EvalInner(e);
    --depth_;
    return v;
  }

  absl::StatusOr<Value> EvalInner(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::kLiteral: return e.literal;
      case Expr::Kind::kName: return Lookup(e.name);
      case Expr::Kind::kAttr: {
        ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
        return GetAttr(obj, e.name, e.line);
      }
      case Expr::Kind::kItem: {
        ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
        ASSIGN_OR_RETURN(Value key, Eval(*e.args[1]));
        return GetItem(obj, key, e.line);
      }
      case Expr::Kind::kSlice: return EvalSlice(e);
      case Expr::Kind::kCall: return EvalCall(e);
      case Expr::Kind::kFilter: return EvalFilter(e);
      case Expr::Kind::kTest: {
        ASSIGN_OR_RETURN(bool r, EvalTest(e));
        return Value::Bool(e.negated ? !r : r);
      }
      case Expr::Kind::kNeg: {
        ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
        if (a.kind == Value::Kind::kInt) return Value::Int(-a.i);
        if (a.IsNumber()) return Value::Float(-a.Num());
        return RenderError(e.line, "unary minus on a non-number");
      }
      case Expr::Kind::kNot: {
        ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
        return Value::Bool(!Truthy(a));
      }
      case Expr::Kind::kAnd: {
        ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
        if (!Truthy(a)) return a;
        return Eval(*e.args[1]);
      }
      case Expr::Kind::kOr: {
        ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
        if (Truthy(a)) return a;
        return Eval(*e.args[1]);
      }
      case Expr::Kind::kCond: {
        ASSIGN_OR_RETURN(Value c, Eval(*e.args[0]));
        if (Truthy(c)) return Eval(*e.args[1]);
        if (e.args.size() > 2) return Eval(*e.args[2]);
        return Value();
      }
      case Expr::Kind::kList: {
        List l;
        for (const auto& a : e.args) {
          ASSIGN_OR_RETURN(Value v, Eval(*a));
          l.push_back(std::move(v));
        }
        return Value::NewList(std::move(l));
      }
      case Expr::Kind::kDict: {
        Dict d;
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          ASSIGN_OR_RETURN(Value key, Eval(*e.args[k]));
          ASSIGN_OR_RETURN(Value val, Eval(*e.args[k + 1]));
          if (key.kind != Value::Kind::kString) return RenderError(e.line, "dict keys must be strings");
          DictSet(d, key.s, std::move(val));
        }
        return Value::NewDict(std::move(d));
      }
      case Expr::Kind::kBinary: return EvalBinary(e);
    }
    return Value();
  }

  absl::StatusOr<Value> GetAttr(const Value& obj, const std::string& name, int line) {
    if (obj.IsMapping()) {
      if (const Value* v = DictFind(*obj.dict, name)) return *v;
      if (obj.kind == Value::Kind::kDict && (name == "items" || name == "keys" || name == "values" || name == "get")) {
        return Value::Builtin("dict." + name, std::make_shared<Value>(obj));
      }
      return Value();
    }
    if (obj.kind == Value::Kind::kString) {
      static const char* kMethods[] = {"startswith", "endswith", "split", "rsplit", "strip", "lstrip", "rstrip",
                                       "lower", "upper", "replace", "title", "capitalize", "find", "count",
                                       "join", "splitlines", "format"};
      for (const char* m : kMethods) {
        if (name == m) return Value::Builtin(StrCat("str.", name), std::make_shared<Value>(obj));
      }
      return Value();
    }
    if (obj.kind == Value::Kind::kList) {
      if (name == "index" || name == "count") return Value::Builtin(StrCat("list.", name), std::make_shared<Value>(obj));
      return Value();
    }
    if (obj.kind == Value::Kind::kUndefined) {
      return RenderError(line, StrCat("'", name, "' of an undefined value"));
    }
    return Value();
  }

  absl::StatusOr<Value> GetItem(const Value& obj, const Value& key, int line) {
    if (obj.IsMapping()) {
      if (key.kind != Value::Kind::kString) return Value();
      const Value* v = DictFind(*obj.dict, key.s);
      return v != nullptr ? *v : Value();
    }
    if (obj.kind == Value::Kind::kList || obj.kind == Value::Kind::kString) {
      if (key.kind != Value::Kind::kInt && key.kind != Value::Kind::kBool) {
        return key.kind == Value::Kind::kString ? GetAttr(obj, key.s, line) : Value();
      }
      const int64_t n = obj.kind == Value::Kind::kList ? static_cast<int64_t>(obj.list->size())
                                                       : static_cast<int64_t>(obj.s.size());
      int64_t k = key.kind == Value::Kind::kBool ? key.b : key.i;
      if (k < 0) k += n;
      if (k < 0 || k >= n) return Value();  // Jinja: undefined
      return obj.kind == Value::Kind::kList ? (*obj.list)[k] : Value::Str(obj.s.substr(k, 1));
    }
    if (obj.kind == Value::Kind::kUndefined) return RenderError(line, "subscript of an undefined value");
    return Value();
  }

  absl::StatusOr<Value> EvalSlice(const Expr& e) {
    ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
    std::optional<int64_t> bound[3];
    for (int k = 0; k < 3; ++k) {
      if (!e.args[k + 1]) continue;
      ASSIGN_OR_RETURN(Value b, Eval(*e.args[k + 1]));
      if (b.kind == Value::Kind::kNone) continue;
      if (b.kind != Value::Kind::kInt) return RenderError(e.line, "slice bounds must be integers");
      bound[k] = b.i;
    }
    const int64_t step = bound[2].value_or(1);
    if (step == 0) return RenderError(e.line, "slice step cannot be zero");
    const bool is_list = obj.kind == Value::Kind::kList;
    if (!is_list && obj.kind != Value::Kind::kString) return RenderError(e.line, "slice of a non-sequence");
    const int64_t n = is_list ? static_cast<int64_t>(obj.list->size()) : static_cast<int64_t>(obj.s.size());
    auto norm = [&](std::optional<int64_t> v, int64_t def_pos, int64_t def_neg) {
      if (!v) return step > 0 ? def_pos : def_neg;
      int64_t x = *v < 0 ? *v + n : *v;
      if (step > 0) return std::clamp<int64_t>(x, 0, n);
      return std::clamp<int64_t>(x, -1, n - 1);
    };
    const int64_t start = norm(bound[0], 0, n - 1), stop = norm(bound[1], n, -1);
    List l;
    std::string s;
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
      if (is_list) l.push_back((*obj.list)[k]); else s += obj.s[k];
    }
    return is_list ? Value::NewList(std::move(l)) : Value::Str(std::move(s));
  }

  absl::StatusOr<Value> EvalBinary(const Expr& e) {
    ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
    ASSIGN_OR_RETURN(Value b, Eval(*e.args[1]));
    const std::string& op = e.name;
    if (op == "==") return Value::Bool(Equal(a, b));
    if (op == "!=") return Value::Bool(!Equal(a, b));
    if (op == "in" || op == "not in") {
      bool found = false;
      if (b.kind == Value::Kind::kString) {
        if (a.kind != Value::Kind::kString) return RenderError(e.line, "'in <string>' needs a string on the left");
        found = b.s.find(a.s) != std::string::npos;
      } else if (b.kind == Value::Kind::kList) {
        for (const auto& x : *b.list) found = found || Equal(a, x);
      } else if (b.IsMapping()) {
        found = a.kind == Value::Kind::kString && DictFind(*b.dict, a.s) != nullptr;
      } else if (b.kind != Value::Kind::kUndefined && b.kind != Value::Kind::kNone) {
        return RenderError(e.line, "'in' on a value that is not a container");
      } else {
        return RenderError(e.line, "'in' on an undefined or none value");
      }
      return Value::Bool(op == "in" ? found : !found);
    }
    if (op == "~") {
      std::string s = ToString(a) + ToString(b);
      RETURN_IF_ERROR(CheckString(s, e.line));
      return Value::Str(std::move(s));
    }
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      int cmp;
      if (a.IsNumber() && b.IsNumber()) {
        cmp = a.Num() < b.Num() ? -1 : a.Num() > b.Num() ? 1 : 0;
      } else if (a.kind == Value::Kind::kString && b.kind == Value::Kind::kString) {
        cmp = a.s.compare(b.s);
      } else {
        return RenderError(e.line, StrCat("cannot compare with '", op, "'"));
      }
      bool r = op == "<" ? cmp < 0 : op == ">" ? cmp > 0 : op == "<=" ? cmp <= 0 : cmp >= 0;
      return Value::Bool(r);
    }
    if (op == "+") {
      if (a.kind == Value::Kind::kString && b.kind == Value::Kind::kString) {
        std::string s = a.s + b.s;
        RETURN_IF_ERROR(CheckString(s, e.line));
        return Value::Str(std::move(s));
      }
      if (a.kind == Value::Kind::kList && b.kind == Value::Kind::kList) {
        RETURN_IF_ERROR(CheckList(a.list->size() + b.list->size(), e.line));
        List l = *a.list;
        l.insert(l.end(), b.list->begin(), b.list->end());
        return Value::NewList(std::move(l));
      }
    }
    if (op == "*" && ((a.kind == Value::Kind::kString && b.kind == Value::Kind::kInt) ||
                      (a.kind == Value::Kind::kInt && b.kind == Value::Kind::kString))) {
      const Value& s = a.kind == Value::Kind::kString ? a : b;
      const int64_t times = std::max<int64_t>(0, a.kind == Value::Kind::kInt ? a.i : b.i);
      if (static_cast<double>(s.s.size()) * times > static_cast<double>(limits_.max_output_bytes)) {
        return RenderError(e.line, "string repetition is too large");
      }
      std::string r;
      for (int64_t k = 0; k < times; ++k) r += s.s;
      return Value::Str(std::move(r));
    }
    if (!a.IsNumber() || !b.IsNumber()) {
      return RenderError(e.line, StrCat("unsupported operand types for '", op, "'"));
    }
    const bool ints = a.kind != Value::Kind::kFloat && b.kind != Value::Kind::kFloat;
    const int64_t ai = a.kind == Value::Kind::kBool ? a.b : a.i, bi = b.kind == Value::Kind::kBool ? b.b : b.i;
    if (op == "+") return ints ? Value::Int(ai + bi) : Value::Float(a.Num() + b.Num());
    if (op == "-") return ints ? Value::Int(ai - bi) : Value::Float(a.Num() - b.Num());
    if (op == "*") return ints ? Value::Int(ai * bi) : Value::Float(a.Num() * b.Num());
    if (op == "/") {
      if (b.Num() == 0) return RenderError(e.line, "division by zero");
      return Value::Float(a.Num() / b.Num());
    }
    if (op == "//" || op == "%") {
      if (b.Num() == 0) return RenderError(e.line, "division by zero");
      if (ints) {
        int64_t q = ai / bi, r = ai % bi;
        if (r != 0 && ((r < 0) != (bi < 0))) {
          --q;
          r += bi;
        }
        return Value::Int(op == "//" ? q : r);
      }
      double q = std::floor(a.Num() / b.Num());
      return Value::Float(op == "//" ? q : a.Num() - q * b.Num());
    }
    if (op == "**") {
      if (ints && bi >= 0 && bi < 64) {
        int64_t r = 1;
        for (int64_t k = 0; k < bi; ++k) r *= ai;
        return Value::Int(r);
      }
      return Value::Float(std::pow(a.Num(), b.Num()));
    }
    return RenderError(e.line, StrCat("unknown operator '", op, "'"));
  }

  struct Args {
    List pos;
    std::map<std::string, Value> kw;
    const Value* Get(size_t index, const std::string& name) const {
      if (index < pos.size()) return &pos[index];
      auto it = kw.find(name);
      return it == kw.end() ? nullptr : &it->second;
    }
  };
  absl::StatusOr<Args> EvalArgs(const Expr& e, size_t first) {
    Args a;
    for (size_t k = first; k < e.args.size(); ++k) {
      ASSIGN_OR_RETURN(Value v, Eval(*e.args[k]));
      a.pos.push_back(std::move(v));
    }
    for (const auto& [name, ex] : e.kwargs) {
      ASSIGN_OR_RETURN(Value v, Eval(*ex));
      a.kw[name] = std::move(v);
    }
    return a;
  }

  absl::StatusOr<Value> EvalCall(const Expr& e) {
    ASSIGN_OR_RETURN(Value fn, Eval(*e.args[0]));
    ASSIGN_OR_RETURN(Args args, EvalArgs(e, 1));
    if (fn.kind != Value::Kind::kCallable) {
      return RenderError(e.line, "call of something that is not a function (an unsupported method?)");
    }
    if (fn.macro != nullptr) return CallMacro(*fn.macro, args, e.line);
    return CallBuiltin(fn, args, e.line);
  }

  absl::StatusOr<Value> CallMacro(const Node& m, const Args& args, int line) {
    if (++macro_depth_ > 50) return RenderError(line, "macros nested or recursing too deeply");
    std::map<std::string, Value> frame;
    for (size_t k = 0; k < m.targets.size(); ++k) {
      if (const Value* v = args.Get(k, m.targets[k])) {
        frame[m.targets[k]] = *v;
      } else if (m.exprs[k]) {
        ASSIGN_OR_RETURN(frame[m.targets[k]], Eval(*m.exprs[k]));
      } else {
        frame[m.targets[k]] = Value();
      }
    }
    scopes_.push_back(std::move(frame));
    std::string out;
    Flow f = Flow::kNormal;
    const int saved_loops = loop_depth_;
    loop_depth_ = 0;
    absl::Status st = Render(*m.children[0], &out, &f);
    loop_depth_ = saved_loops;
    scopes_.pop_back();
    --macro_depth_;
    RETURN_IF_ERROR(st);
    return Value::Str(std::move(out));
  }

  static std::string StripChars(const std::string& s, const Value* chars, bool left, bool right) {
    const std::string set = (chars != nullptr && chars->kind == Value::Kind::kString) ? chars->s : " \t\n\r\v\f";
    size_t b = 0, e = s.size();
    if (left) while (b < e && set.find(s[b]) != std::string::npos) ++b;
    if (right) while (e > b && set.find(s[e - 1]) != std::string::npos) --e;
    return s.substr(b, e - b);
  }

  static List SplitString(const std::string& s, const Value* sep, int64_t maxsplit) {
    List out;
    if (sep == nullptr || sep->kind == Value::Kind::kNone) {
      size_t k = 0;
      while (k < s.size()) {
        while (k < s.size() && IsSpace(s[k])) ++k;
        if (k >= s.size()) break;
        size_t j = k;
        if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
          j = s.size();
          while (j > k && IsSpace(s[j - 1])) --j;
          out.push_back(Value::Str(s.substr(k, j - k)));
          break;
        }
        while (j < s.size() && !IsSpace(s[j])) ++j;
        out.push_back(Value::Str(s.substr(k, j - k)));
        k = j;
      }
      return out;
    }
    size_t k = 0;
    while (true) {
      size_t j = (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) ? std::string::npos
                                                                                  : s.find(sep->s, k);
      if (j == std::string::npos) {
        out.push_back(Value::Str(s.substr(k)));
        return out;
      }
      out.push_back(Value::Str(s.substr(k, j - k)));
      k = j + sep->s.size();
    }
  }

  absl::StatusOr<Value> CallBuiltin(const Value& fn, const Args& a, int line) {
    const std::string& name = fn.s;
    const Value* self = fn.self.get();
    if (name == "namespace") {
      Value ns = Value::NewDict();
      ns.kind = Value::Kind::kNamespace;
      for (const auto& v : a.pos) {
        if (v.kind == Value::Kind::kDict) for (const auto& [k, x] : *v.dict) DictSet(*ns.dict, k, x);
      }
      for (const auto& [k, v] : a.kw) DictSet(*ns.dict, k, v);
      return ns;
    }
    if (name == "dict") {
      Value d = Value::NewDict();
      for (const auto& [k, v] : a.kw) DictSet(*d.dict, k, v);
      return d;
    }
    if (name == "range") {
      int64_t start = 0, stop = 0, step = 1;
      for (const auto& v : a.pos) {
        if (v.kind != Value::Kind::kInt) return RenderError(line, "range() takes integers");
      }
      if (a.pos.size() == 1) {
        stop = a.pos[0].i;
      } else if (a.pos.size() >= 2) {
        start = a.pos[0].i;
        stop = a.pos[1].i;
        if (a.pos.size() > 2) step = a.pos[2].i;
      }
      if (step == 0) return RenderError(line, "range() step cannot be zero");
      const double count = std::ceil(static_cast<double>(stop - start) / static_cast<double>(step));
      if (count > static_cast<double>(limits_.max_list_items)) {
        return RenderError(line, StrCat("range() of ", count, " items exceeds the limit of ", limits_.max_list_items));
      }
      List l;
      for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) l.push_back(Value::Int(k));
      return Value::NewList(std::move(l));
    }
    if (name == "raise_exception") {
      return absl::InvalidArgumentError(StrCat("chat template raised an error: ",
                                               a.pos.empty() ? std::string() : ToString(a.pos[0])));
    }
    if (name == "strftime_now") {
      return RenderError(line, "strftime_now() is not supported (it would make renders time-dependent)");
    }
    if (self != nullptr && self->kind == Value::Kind::kString) {
      const std::string& s = self->s;
      const Value* a0 = a.Get(0, "");
      if (name == "str.startswith" || name == "str.endswith") {
        if (a0 == nullptr) return RenderError(line, StrCat(name, "() needs an argument"));
        List prefixes = a0->kind == Value::Kind::kList ? *a0->list : List{*a0};
        for (const auto& p : prefixes) {
          if (p.kind != Value::Kind::kString) return RenderError(line, StrCat(name, "() needs strings"));
          bool hit = name == "str.startswith" ? s.rfind(p.s, 0) == 0
                                              : (s.size() >= p.s.size() && s.compare(s.size() - p.s.size(), p.s.size(), p.s) == 0);
          if (hit) return Value::Bool(true);
        }
        return Value::Bool(false);
      }
      if (name == "str.strip") return Value::Str(StripChars(s, a0, true, true));
      if (name == "str.lstrip") return Value::Str(StripChars(s, a0, true, false));
      if (name == "str.rstrip") return Value::Str(StripChars(s, a0, false, true));
      if (name == "str.split" || name == "str.rsplit") {
        const Value* max = a.Get(1, "maxsplit");
        if (name == "str.rsplit" && max != nullptr && max->kind == Value::Kind::kInt && max->i >= 0) {
          return RenderError(line, "rsplit() with maxsplit is not supported");
        }
        const Value* sep = a.Get(0, "sep");
        if (sep != nullptr && sep->kind == Value::Kind::kString && sep->s.empty()) {
          return RenderError(line, "split() with an empty separator");
        }
        return Value::NewList(SplitString(s, sep, max != nullptr && max->kind == Value::Kind::kInt ? max->i : -1));
      }
      if (name == "str.lower" || name == "str.upper") {
        std::string r = s;
        for (char& c : r) c = static_cast<char>(name == "str.lower" ? std::tolower(static_cast<unsigned char>(c))
                                                                    : std::toupper(static_cast<unsigned char>(c)));
        return Value::Str(r);
      }
      if (name == "str.title" || name == "str.capitalize") {
        std::string r = s;
        bool start = true;
        for (size_t k = 0; k < r.size(); ++k) {
          unsigned char c = static_cast<unsigned char>(r[k]);
          if (name == "str.capitalize") {
            r[k] = static_cast<char>(k == 0 ? std::toupper(c) : std::tolower(c));
          } else {
            r[k] = static_cast<char>(start ? std::toupper(c) : std::tolower(c));
            start = !std::isalpha(c);
          }
        }
        return Value::Str(r);
      }
      if (name == "str.replace") {
        const Value* from = a.Get(0, "old");
        const Value* to = a.Get(1, "new");
        if (from == nullptr || to == nullptr || from->kind != Value::Kind::kString || to->kind != Value::Kind::kString) {
          return RenderError(line, "replace() needs two strings");
        }
        if (from->s.empty()) return RenderError(line, "replace() of an empty string");
        std::string r;
        size_t k = 0, j;
        while ((j = s.find(from->s, k)) != std::string::npos) {
          r += s.substr(k, j - k) + to->s;
          RETURN_IF_ERROR(CheckString(r, line));
          k = j + from->s.size();
        }
        return Value::Str(r + s.substr(k));
      }
      if (name == "str.find" || name == "str.count") {
        if (a0 == nullptr || a0->kind != Value::Kind::kString) return RenderError(line, StrCat(name, "() needs a string"));
        if (name == "str.find") {
          size_t p = s.find(a0->s);
          return Value::Int(p == std::string::npos ? -1 : static_cast<int64_t>(p));
        }
        if (a0->s.empty()) return Value::Int(static_cast<int64_t>(s.size()) + 1);
        int64_t count = 0;
        for (size_t p = s.find(a0->s); p != std::string::npos; p = s.find(a0->s, p + a0->s.size())) ++count;
        return Value::Int(count);
      }
      if (name == "str.join") {
        if (a0 == nullptr || a0->kind != Value::Kind::kList) return RenderError(line, "join() needs a list");
        std::string r;
        for (size_t k = 0; k < a0->list->size(); ++k) r += (k ? s : "") + ToString((*a0->list)[k]);
        RETURN_IF_ERROR(CheckString(r, line));
        return Value::Str(r);
      }
      if (name == "str.splitlines") {
        List l;
        size_t k = 0;
        while (k < s.size()) {
          size_t j = s.find_first_of("\r\n", k);
          if (j == std::string::npos) {
            l.push_back(Value::Str(s.substr(k)));
            break;
          }
          l.push_back(Value::Str(s.substr(k, j - k)));
          k = j + ((s[j] == '\r' && j + 1 < s.size() && s[j + 1] == '\n') ? 2 : 1);
        }
        return Value::NewList(std::move(l));
      }
      return RenderError(line, StrCat("string method '", name.substr(4), "' is not supported"));
    }
    if (self != nullptr && self->kind == Value::Kind::kDict) {
      if (name == "dict.items" || name == "dict.keys" || name == "dict.values") {
        List l;
        for (const auto& [k, v] : *self->dict) {
          if (name == "dict.items") l.push_back(Value::NewList({Value::Str(k), v}));
          else if (name == "dict.keys") l.push_back(Value::Str(k));
          else l.push_back(v);
        }
        return Value::NewList(std::move(l));
      }
      if (name == "dict.get") {
        const Value* key = a.Get(0, "key");
        if (key != nullptr && key->kind == Value::Kind::kString) {
          if (const Value* v = DictFind(*self->dict, key->s)) return *v;
        }
        const Value* def = a.Get(1, "default");
        return def != nullptr ? *def : Value::None();
      }
    }
    if (self != nullptr && self->kind == Value::Kind::kList) {
      const Value* a0 = a.Get(0, "");
      if (a0 == nullptr) return RenderError(line, StrCat(name, "() needs an argument"));
      int64_t count = 0;
      for (size_t k = 0; k < self->list->size(); ++k) {
        if (Equal((*self->list)[k], *a0)) {
          if (name == "list.index") return Value::Int(static_cast<int64_t>(k));
          ++count;
        }
      }
      if (name == "list.index") return RenderError(line, "list.index(): value not in list");
      return Value::Int(count);
    }
    return RenderError(line, StrCat("function '", name, "' is not supported"));
  }

  absl::StatusOr<Value> EvalFilter(const Expr& e) {
    ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
    ASSIGN_OR_RETURN(Args a, EvalArgs(e, 1));
    const std::string& f = e.name;
    const Value* a0 = a.Get(0, "");
    if (f == "length" || f == "count") {
      if (v.kind == Value::Kind::kString) {
        int64_t n = 0;
        for (unsigned char c : v.s) n += (c & 0xc0) != 0x80;
        return Value::Int(n);
      }
      if (v.kind == Value::Kind::kList) return Value::Int(static_cast<int64_t>(v.list->size()));
      if (v.IsMapping()) return Value::Int(static_cast<int64_t>(v.dict->size()));
      if (v.kind == Value::Kind::kUndefined) return Value::Int(0);
      return RenderError(e.line, "length of a value that has none");
    }
    if (f == "tojson") {
      const Value* indent = a.Get(0, "indent");
      const Value* sort = a.kw.count("sort_keys") ? &a.kw.at("sort_keys") : nullptr;
      std::string out;
      ToJson(v, indent != nullptr && indent->kind == Value::Kind::kInt ? static_cast<int>(indent->i) : -1,
             sort != nullptr && Truthy(*sort), 0, &out);
      RETURN_IF_ERROR(CheckString(out, e.line));
      return Value::Str(std::move(out));
    }
    if (f == "trim") return Value::Str(StripChars(ToString(v), a0, true, true));
    if (f == "upper" || f == "lower" || f == "title" || f == "capitalize") {
      Value fn = Value::Builtin("str." + f, std::make_shared<Value>(Value::Str(ToString(v))));
      return CallBuiltin(fn, Args{}, e.line);
    }
    if (f == "string") return Value::Str(ToString(v));
    if (f == "safe" || f == "e" || f == "escape") {
      if (f != "safe") return RenderError(e.line, "the escape filter is not supported");
      return v;
    }
    if (f == "first" || f == "last") {
      if (v.kind == Value::Kind::kList) {
        if (v.list->empty()) return Value();
        return f == "first" ? v.list->front() : v.list->back();
      }
      if (v.kind == Value::Kind::kString) {
        if (v.s.empty()) return Value();
        return Value::Str(f == "first" ? v.s.substr(0, 1) : v.s.substr(v.s.size() - 1));
      }
      return RenderError(e.line, StrCat("'", f, "' of a value that is not a sequence"));
    }
    if (f == "join") {
      if (v.kind != Value::Kind::kList) return RenderError(e.line, "join of a value that is not a list");
      const std::string sep = a0 != nullptr ? ToString(*a0) : "";
      const Value* attr = a.kw.count("attribute") ? &a.kw.at("attribute") : nullptr;
      std::string r;
      for (size_t k = 0; k < v.list->size(); ++k) {
        Value item = (*v.list)[k];
        if (attr != nullptr) {
          ASSIGN_OR_RETURN(item, GetAttr(item, ToString(*attr), e.line));
        }
        r += (k ? sep : "") + ToString(item);
        RETURN_IF_ERROR(CheckString(r, e.line));
      }
      return Value::Str(r);
    }
    if (f == "default" || f == "d") {
      const Value* boolean = a.Get(1, "boolean");
      const bool use_default = v.kind == Value::Kind::kUndefined || (boolean != nullptr && Truthy(*boolean) && !Truthy(v));
      if (use_default) return a0 != nullptr ? *a0 : Value::Str("");
      return v;
    }
    if (f == "list") {
      if (v.kind == Value::Kind::kList) return Value::NewList(*v.list);
      if (v.kind == Value::Kind::kDict) {
        List l;
        for (const auto& [k, x] : *v.dict) l.push_back(Value::Str(k));
        return Value::NewList(std::move(l));
      }
      if (v.kind == Value::Kind::kString) {
        List l;
        for (char c : v.s) l.push_back(Value::Str(std::string(1, c)));
        return Value::NewList(std::move(l));
      }
      return RenderError(e.line, "list() of a value that is not iterable");
    }
    if (f == "items") {
      if (!v.IsMapping()) return RenderError(e.line, "items of a value that is not a mapping");
      List l;
      for (const auto& [k, x] : *v.dict) l.push_back(Value::NewList({Value::Str(k), x}));
      return Value::NewList(std::move(l));
    }
    if (f == "reverse") {
      if (v.kind == Value::Kind::kList) return Value::NewList(List(v.list->rbegin(), v.list->rend()));
      if (v.kind == Value::Kind::kString) return Value::Str(std::string(v.s.rbegin(), v.s.rend()));
      return RenderError(e.line, "reverse of a value that is not a sequence");
    }
    if (f == "replace") {
      Value fn = Value::Builtin("str.replace", std::make_shared<Value>(Value::Str(ToString(v))));
      return CallBuiltin(fn, a, e.line);
    }
    if (f == "int") {
      if (v.kind == Value::Kind::kInt) return v;
      if (v.IsNumber()) return Value::Int(static_cast<int64_t>(v.Num()));
      if (v.kind == Value::Kind::kString) {
        int64_t x = 0;
        auto r = std::from_chars(v.s.data(), v.s.data() + v.s.size(), x);
        return Value::Int(r.ec == std::errc() ? x : 0);
      }
      return Value::Int(0);
    }
    if (f == "float") {
      if (v.IsNumber()) return Value::Float(v.Num());
      if (v.kind == Value::Kind::kString) return Value::Float(std::strtod(v.s.c_str(), nullptr));
      return Value::Float(0);
    }
    if (f == "abs") {
      if (v.kind == Value::Kind::kInt) return Value::Int(v.i < 0 ? -v.i : v.i);
      if (v.IsNumber()) return Value::Float(std::fabs(v.Num()));
      return RenderError(e.line, "abs of a non-number");
    }
    if (f == "selectattr" || f == "rejectattr" || f == "map") {
      if (v.kind != Value::Kind::kList) return RenderError(e.line, StrCat(f, " of a value that is not a list"));
      List out;
      if (f == "map") {
        const Value* attr = a.kw.count("attribute") ? &a.kw.at("attribute") : nullptr;
        if (attr == nullptr) return RenderError(e.line, "map() is supported with attribute= only");
        for (const auto& item : *v.list) {
          ASSIGN_OR_RETURN(Value x, GetAttr(item, ToString(*attr), e.line));
          out.push_back(std::move(x));
        }
        return Value::NewList(std::move(out));
      }
      if (a0 == nullptr) return RenderError(e.line, StrCat(f, "() needs an attribute name"));
      for (const auto& item : *v.list) {
        ASSIGN_OR_RETURN(Value x, GetAttr(item, ToString(*a0), e.line));
        bool keep;
        if (a.pos.size() >= 2) {
          const std::string test = ToString(a.pos[1]);
          const Value other = a.pos.size() >= 3 ? a.pos[2] : Value();
          if (test == "equalto" || test == "eq" || test == "==") keep = Equal(x, other);
          else if (test == "ne" || test == "!=") keep = !Equal(x, other);
          else if (test == "defined") keep = x.kind != Value::Kind::kUndefined;
          else if (test == "undefined") keep = x.kind == Value::Kind::kUndefined;
          else if (test == "none") keep = x.kind == Value::Kind::kNone;
          else if (test == "string") keep = x.kind == Value::Kind::kString;
          else return RenderError(e.line, StrCat("test '", test, "' in ", f, "() is not supported"));
        } else {
          keep = Truthy(x);
        }
        if (keep == (f == "selectattr")) out.push_back(item);
      }
      return Value::NewList(std::move(out));
    }
    if (f == "unique") {
      if (v.kind != Value::Kind::kList) return RenderError(e.line, "unique of a value that is not a list");
      List out;
      for (const auto& item : *v.list) {
        bool seen = false;
        for (const auto& o : out) seen = seen || Equal(o, item);
        if (!seen) out.push_back(item);
      }
      return Value::NewList(std::move(out));
    }
    if (f == "round") {
      if (!v.IsNumber()) return RenderError(e.line, "round of a non-number");
      const int digits = a0 != nullptr && a0->kind == Value::Kind::kInt ? static_cast<int>(a0->i) : 0;
      const double scale = std::pow(10.0, digits);
      return Value::Float(std::nearbyint(v.Num() * scale) / scale);
    }
    return RenderError(e.line, StrCat("filter '", f, "' is not supported"));
  }

  absl::StatusOr<bool> EvalTest(const Expr& e) {
    ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
    ASSIGN_OR_RETURN(Args a, EvalArgs(e, 1));
    const std::string& t = e.name;
    const Value* a0 = a.Get(0, "");
    if (t == "defined") return v.kind != Value::Kind::kUndefined;
    if (t == "undefined") return v.kind == Value::Kind::kUndefined;
    if (t == "none") return v.kind == Value::Kind::kNone;
    if (t == "true") return v.kind == Value::Kind::kBool && v.b;
    if (t == "false") return v.kind == Value::Kind::kBool && !v.b;
    if (t == "boolean") return v.kind == Value::Kind::kBool;
    if (t == "string") return v.kind == Value::Kind::kString;
    if (t == "number") return v.kind == Value::Kind::kInt || v.kind == Value::Kind::kFloat;
    if (t == "integer") return v.kind == Value::Kind::kInt;
    if (t == "float") return v.kind == Value::Kind::kFloat;
    if (t == "mapping") return v.IsMapping();
    if (t == "sequence" || t == "iterable") {
      return v.kind == Value::Kind::kList || v.kind == Value::Kind::kString || v.IsMapping();
    }
    if (t == "callable") return v.kind == Value::Kind::kCallable;
    if (t == "odd" || t == "even") {
      if (v.kind != Value::Kind::kInt) return RenderError(e.line, StrCat("'", t, "' test of a non-integer"));
      return (v.i % 2 != 0) == (t == "odd");
    }
    if (t == "divisibleby") {
      if (v.kind != Value::Kind::kInt || a0 == nullptr || a0->kind != Value::Kind::kInt || a0->i == 0) {
        return RenderError(e.line, "bad 'divisibleby' test");
      }
      return v.i % a0->i == 0;
    }
    if (a0 != nullptr) {
      if (t == "eq" || t == "equalto" || t == "sameas" || t == "==") return Equal(v, *a0);
      if (t == "ne" || t == "!=") return !Equal(v, *a0);
      if (t == "in") {
        if (a0->kind == Value::Kind::kList) {
          for (const auto& x : *a0->list) {
            if (Equal(v, x)) return true;
          }
          return false;
        }
        if (a0->kind == Value::Kind::kString && v.kind == Value::Kind::kString) return a0->s.find(v.s) != std::string::npos;
        if (a0->IsMapping() && v.kind == Value::Kind::kString) return DictFind(*a0->dict, v.s) != nullptr;
      }
    }
    if (t == "lower" || t == "upper") {
      if (v.kind != Value::Kind::kString) return false;
      for (unsigned char c : v.s) {
        if (t == "lower" ? std::isupper(c) : std::islower(c)) return false;
      }
      return true;
    }
    return RenderError(e.line, StrCat("test '", t, "' is not supported"));
  }

  Limits limits_;
  int64_t steps_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
  int macro_depth_ = 0;
  std::vector<std::map<std::string, Value>> scopes_;
};

}  // namespace

Template::~Template() = default;

absl::StatusOr<std::unique_ptr<Template>> Template::Parse(std::string_view source) {
  if (source.size() > (16u << 20)) return absl::InvalidArgumentError("chat template is larger than 16 MiB");
  ASSIGN_OR_RETURN(std::vector<Segment> segs, Split(source));
  auto t = std::unique_ptr<Template>(new Template());
  t->root_ = std::make_unique<Node>();
  TreeBuilder builder(std::move(segs));
  ASSIGN_OR_RETURN(std::string stop, builder.Block(t->root_.get(), {}, 0));
  (void)stop;
  return t;
}

absl::StatusOr<std::string> Template::Render(const Json& context, const Limits& limits) const {
  if (!context.is_object()) return absl::InvalidArgumentError("template context must be a JSON object");
  Renderer r(limits);
  r.PushGlobals(context);
  std::string out;
  Flow flow = Flow::kNormal;
  RETURN_IF_ERROR(r.Render(*root_, &out, &flow));
  return out;
}

}  // namespace pinmoe::jinja
