// The JSON layer of load_model_config (config_json.hpp): value quoting, bounded parsing, two-spelling values.
#include "core/config_json.hpp"

#include "posenc/model_config.hpp"

namespace posenc::detail::config {

std::string value_text(const json& v) {
  return message_excerpt(v.dump(-1, ' ', false, json::error_handler_t::replace));
}

// The depth is checked by the parser's callback as each object or array opens, before anything
// deeper is built: nlohmann's parser is iterative, but dump() and comparisons of a value recurse,
// so an unbounded depth would let a small file exhaust the stack. Every JSON-library failure
// (syntax, a number too large for a double such as 1e400) is a config error naming the file.
json parse_bounded(const std::string& text, const std::string& source) {
  if (static_cast<std::int64_t>(text.size()) > max_config_bytes)
    throw Error(ErrorKind::config, "model config " + source + ": " + std::to_string(text.size()) +
                                       " bytes exceeds the limit of " + std::to_string(max_config_bytes) +
                                       " bytes (max_config_bytes)");
  const json::parser_callback_t limit_depth = [&source](int depth, json::parse_event_t event, json&) {
    // `depth` counts the containers enclosing the one that starts (0 for the top level).
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= max_config_depth)
      throw Error(ErrorKind::config, "model config " + source + ": JSON nested deeper than the limit of " +
                                         std::to_string(max_config_depth) + " levels (max_config_depth)");
    return true;
  };
  try {
    return json::parse(text, limit_depth);
  } catch (const json::exception& e) {
    throw Error(ErrorKind::config, "model config " + source + ": not valid JSON: " + message_excerpt(e.what(), 200));
  }
}

std::optional<double> either_number(const Node& n, std::string_view a, std::string_view b) {
  const std::optional<double> va = n.number(a);
  const std::optional<double> vb = n.number(b);
  if (va && vb && *va != *vb)
    n.fail(b, "contradicts '" + n.key_text(a) + "' = " + number_text(*va) + " (two spellings of one value)");
  return va ? va : vb;
}

}  // namespace posenc::detail::config
